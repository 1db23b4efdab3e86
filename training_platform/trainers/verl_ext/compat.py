"""Make verl 0.9.1 work in the platform's pinned training environment (trl 1.16, no flash-attn).

1. verl calls `is_trl_available()` and then imports `AutoModelForCausalLMWithValueHead` from
   trl, for every model it builds. trl 1.13 removed that class (PPO left trl), so with trl
   1.16 installed every verl run fails at model load. Here "trl available" means "that class
   can be imported".
2. verl's critic loads its value model with `attn_implementation="flash_attention_2"` written
   into the call; without flash-attn that raises, and verl then falls back to the missing trl
   class. Without flash-attn the value model is loaded with sdpa instead.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import verl.utils.import_utils as import_utils


def value_head_importable() -> bool:
    """Whether trl still ships AutoModelForCausalLMWithValueHead (trl <= 1.12)."""
    for module in ("trl.experimental.ppo", "trl"):
        try:
            if hasattr(importlib.import_module(module), "AutoModelForCausalLMWithValueHead"):
                return True
        except ImportError:
            continue
    return False


def load_value_model_without_flash_attn(
    local_path: str, torch_dtype: Any, model_config: Any, trust_remote_code: bool
) -> Any:
    """verl's value model (a token classifier with one label), with sdpa attention."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        pretrained_model_name_or_path=local_path,
        torch_dtype=torch_dtype,
        config=model_config,
        attn_implementation="sdpa",
        trust_remote_code=trust_remote_code,
    )


def _load_value_model(original: Any) -> Any:
    def load(local_path: str, torch_dtype: Any, model_config: Any, trust_remote_code: bool) -> Any:
        if importlib.util.find_spec("flash_attn") is not None:
            return original(local_path, torch_dtype, model_config, trust_remote_code)
        return load_value_model_without_flash_attn(
            local_path, torch_dtype, model_config, trust_remote_code
        )

    return load


def install() -> None:
    """Patch verl's modules; those that verl imports later take the patched function."""
    import_utils.is_trl_available = value_head_importable  # type: ignore[assignment]
    # Modules that already copied the name (`from ... import is_trl_available`) get it too.
    for name in ("verl.models.transformers.monkey_patch", "verl.utils.model"):
        module = sys.modules.get(name)
        if module is not None:
            module.is_trl_available = value_head_importable  # type: ignore[attr-defined]
    import verl.utils.model as model_utils

    if not getattr(model_utils.load_valuehead_model, "_platform_patched", False):
        patched = _load_value_model(model_utils.load_valuehead_model)
        patched._platform_patched = True
        model_utils.load_valuehead_model = patched


install()
