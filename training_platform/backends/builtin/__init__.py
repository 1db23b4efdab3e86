"""Built-in job kinds that are not training: evaluation of a model on held-out prompts."""

from training_platform.backends.builtin import evaluate  # noqa: F401  (registers the pair)
