"""A vLLM general plugin: reloadable weights on vLLM's CPU build, for verl RL on CPU.

verl's rollout keeps one vLLM engine for the whole run and pushes the actor's new weights into
it after every update (`model.load_weights`, in place). vLLM 0.32's CPU build instead packs each
linear layer's weight for oneDNN after loading and drops the original parameter (with it the
`weight_loader` that an in-place reload needs), and keeps a packed copy of the output
embedding: a reload then fails (`'Parameter' object has no attribute 'weight_loader'`) or, for
the embedding, leaves the logits on the old weights. This plugin makes every such layer compute
with `torch.nn.functional.linear` on its own, reloadable weight.

vLLM loads general plugins in each of its processes (`vllm.general_plugins` entry point in
pyproject.toml). The plugin does nothing unless TP_VLLM_CPU_RELOADABLE=1, which only the verl
RL CPU plans set: evaluation and serving keep vLLM's packed kernels. A proof of the platform's
path on CPU, pinned to vLLM 0.32; slower than the packed kernels.
"""

from __future__ import annotations

import os

ENV_FLAG = "TP_VLLM_CPU_RELOADABLE"


def _keep_weight(layer, remove_weight: bool) -> None:  # type: ignore[no-untyped-def]
    import torch

    layer.cpu_linear = torch.nn.functional.linear


def register() -> None:
    """Entry point: on CPU, with the flag set, linear layers keep their plain weights."""
    if os.environ.get(ENV_FLAG) != "1":
        return
    import vllm.model_executor.layers.utils as layer_utils  # type: ignore[import-not-found]

    # The layers import the function from this module when they process their weights.
    layer_utils.dispatch_cpu_unquantized_gemm = _keep_weight
