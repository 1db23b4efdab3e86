"""Built-in job kinds that are not training: evaluation of a model on held-out prompts, and
serving a model over an OpenAI-compatible API."""

from training_platform.backends.builtin import evaluate, merge, serve  # noqa: F401  (register the pairs)
