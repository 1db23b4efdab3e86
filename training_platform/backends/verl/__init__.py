"""verl backends: SFT, PPO, GRPO and GSPO on GPU hosts (SFT also as a CPU smoke test)."""

from training_platform.backends.verl import rl, sft  # noqa: F401  (registers the pairs)
