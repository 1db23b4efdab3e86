"""The compat module loaded into every verl run fixes verl 0.9.1 in the pinned environment.

The check runs in a fresh interpreter: verl as it is, then with the module loaded by the
function verl's hook (VERL_USE_EXTERNAL_MODULES) calls while `import verl` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl's environment (environments/gpu-verl.txt)")

from training_platform.backends.verl.common import COMPAT_MODULE

pytestmark = pytest.mark.slow

PROBE = """
import importlib, json, sys, torch
import verl
from verl.models.transformers import monkey_patch
from verl.utils import model as model_utils
from verl.utils.import_utils import import_external_libs
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
config.num_labels = 1


def seen():
    try:
        model = model_utils.load_valuehead_model(sys.argv[1], torch.float32, config, False)
        loaded = type(model).__name__
    except Exception as error:
        loaded = type(error).__name__
    return {"trl_value_head": monkey_patch.is_trl_available(), "value_model": loaded}


before = seen()
import_external_libs(sys.argv[2].split(","))  # what verl's hook does at `import verl`
print(json.dumps([before, seen()]))
"""


def probe(model_dir: Path, modules: str) -> list[dict[str, object]]:
    """What verl sees in a fresh process without the platform's modules, then with them
    loaded by the function verl's hook (VERL_USE_EXTERNAL_MODULES) calls."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir), modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: list[dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_verl_builds_models_with_trl_1_16_and_without_flash_attn(tiny_model_dir: Path) -> None:
    # Without the module, verl believes trl still has its PPO value head (removed in trl
    # 1.13) and imports it for every model it builds (an ImportError in a real run), and
    # its critic's value model loads only with flash-attn.
    # (The e2e verl runs load it through the hook itself: tests/e2e/test_verl_rl.py.)
    without, with_module = probe(tiny_model_dir, COMPAT_MODULE)
    assert without == {"trl_value_head": True, "value_model": "ImportError"}
    assert with_module == {"trl_value_head": False, "value_model": "Qwen2ForTokenClassification"}
