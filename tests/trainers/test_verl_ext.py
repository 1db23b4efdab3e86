"""The compat module loaded into every verl run fixes verl 0.9.1 in the pinned environment.

Each check runs in a fresh interpreter: the module is loaded by verl's own hook
(VERL_USE_EXTERNAL_MODULES) while `import verl` runs, as in a real verl process.
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
import json, sys, torch
import verl
from verl.models.transformers import monkey_patch
from verl.utils import model as model_utils
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
config.num_labels = 1
try:
    value_model = type(model_utils.load_valuehead_model(sys.argv[1], torch.float32, config, False))
    loaded = value_model.__name__
except Exception as error:
    loaded = type(error).__name__
print(json.dumps({"trl_value_head": monkey_patch.is_trl_available(), "value_model": loaded}))
"""


def probe(model_dir: Path, modules: str | None) -> dict[str, object]:
    """What verl sees in a process started with (or without) the platform's modules."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    if modules:
        env["VERL_USE_EXTERNAL_MODULES"] = modules
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_verl_builds_models_with_trl_1_16_and_without_flash_attn(tiny_model_dir: Path) -> None:
    # Without the module, verl believes trl still has its PPO value head (removed in trl
    # 1.13) and imports it for every model it builds (an ImportError in a real run), and
    # its critic's value model loads only with flash-attn.
    assert probe(tiny_model_dir, None) == {"trl_value_head": True, "value_model": "ImportError"}
    assert probe(tiny_model_dir, COMPAT_MODULE) == {
        "trl_value_head": False,
        "value_model": "Qwen2ForTokenClassification",
    }
