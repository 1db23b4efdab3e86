"""The trainer programs do without the packages no run uses (trainers/lean.py)."""

from __future__ import annotations

import subprocess
import sys


def test_transformers_and_trl_load_without_wandb_and_scikit_learn() -> None:
    code = (
        "import sys\n"
        "from training_platform.trainers.lean import UNUSED, skip_unused_imports\n"
        "skip_unused_imports()\n"
        "import transformers.generation.candidate_generator\n"
        "import trl.trainer.base_trainer\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in UNUSED and sys.modules[n]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
