"""What the trainer programs do before their first Hugging Face import.

Two packages sit in the trainers' environment for other reasons (verl requires wandb,
lm-eval scikit-learn) and are imported at module level wherever they are installed: TRL
imports wandb, transformers' generation utilities import scikit-learn's metrics (for
assisted decoding). No run of the platform uses them (runs report to the platform only,
report_to is empty), yet they cost every run's start about 1.5 s of CPU between them (wandb
1.2 s; scikit-learn 0.3 s, 420 modules, of the 8 s that importing torch, transformers, TRL
and datasets takes on the 2-core test machine). A None
entry in sys.modules makes importlib's find_spec answer "not installed", so nothing imports
them.
"""

from __future__ import annotations

import sys

UNUSED = ("wandb", "sklearn")


def skip_unused_imports() -> None:
    """Make the unused packages look absent to this process (call before importing them)."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
