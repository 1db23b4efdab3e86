"""TRL backend: single-node training that runs on CPU and GPU."""

from training_platform.backends.trl import sft  # noqa: F401  (registers the pair)
