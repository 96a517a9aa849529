"""The one exception type a stage raises for bad input or configuration."""


class PipelineError(Exception):
    """A problem the user can fix: the message says what went wrong and where."""
