"""`python -m pipeline STAGE`: the same app as the `maestro-xl` console script."""

from pipeline.cli import app

app()
