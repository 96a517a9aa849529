"""Sharing and review: the DVC remote's pull with clear messages, and the pull-request comparison of two runs."""
