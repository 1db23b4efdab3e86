"""training_platform: post-train LLMs with verl and TRL from a dashboard, REST or the tp CLI."""

__version__ = "0.1.0"
