"""`python -m training_platform` is the `tp` CLI."""

from training_platform.cli.main import app

app()
