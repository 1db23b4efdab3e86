"""Bundled assets: the tiny Qwen2 model recipe and the tiny datasets used by tests and demos."""

from __future__ import annotations

from training_platform.assets.tiny import (
    BUNDLED_DATASETS,
    DATASETS_DIR,
    TINY_MODEL_NAME,
    BundledDataset,
    build_tiny_model,
    count_parameters,
)

__all__ = [
    "BUNDLED_DATASETS",
    "DATASETS_DIR",
    "TINY_MODEL_NAME",
    "BundledDataset",
    "build_tiny_model",
    "count_parameters",
]
