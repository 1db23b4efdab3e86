"""TRL backend: single-node training that runs on CPU and GPU (PPO on the platform's own)."""

from training_platform.backends.trl import dpo, grpo, ppo, sft  # noqa: F401  (registers pairs)
