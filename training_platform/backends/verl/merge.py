"""Converting a verl FSDP checkpoint into a Hugging Face model directory.

`merge_plan` builds the one argv of `python -m verl.model_merger merge --backend fsdp`. A verl
run's own conversion, done by the wrapper (`trainers/verl_run.py`) after verl exits, uses the
same argv: `final_model_config` puts it into verl_run.json with the step directory left as
STEP_DIR_PLACEHOLDER, which the wrapper replaces by the last complete `global_step_N` (it cannot
import this module: it runs with the standard library only).
"""

from __future__ import annotations

from typing import Any

from training_platform.backends.base import LaunchContext, LaunchPlan

MERGER_MODULE = "verl.model_merger"
# `<run dir>/model`: where a run's final Hugging Face model goes, as with the TRL trainers.
FINAL_MODEL_DIR = "model"
STEP_DIR_PLACEHOLDER = "{step_dir}"


def shards_dir(step_dir: str, algorithm: str) -> str:
    """Where a `global_step_N` checkpoint keeps the FSDP shards of the trained policy.

    verl SFT writes them into the step directory itself; the RL trainer writes one
    subdirectory per role, and the policy is `actor`.
    """
    return step_dir if algorithm == "sft" else f"{step_dir}/actor"


def merge_plan(checkpoint_dir: str, target_dir: str, python: str) -> LaunchPlan:
    """`python -m verl.model_merger merge --backend fsdp` from shards to `target_dir`."""
    return LaunchPlan(
        backend="verl",
        algorithm="merge",
        argv=(
            python,
            "-m",
            MERGER_MODULE,
            "merge",
            "--backend",
            "fsdp",
            "--local_dir",
            checkpoint_dir,
            "--target_dir",
            target_dir,
        ),
        # The checkpoint carries its config and tokenizer (huggingface/); no hub is needed.
        env={"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
    )


def final_model_config(context: LaunchContext, algorithm: str) -> dict[str, Any]:
    """verl_run.json's `final_model`: how the wrapper turns the last checkpoint into `model/`.

    `shards` and the `--local_dir` argument start with STEP_DIR_PLACEHOLDER, which the wrapper
    replaces by the step directory; `target_dir` is relative to the run dir; `base_model` goes
    into a LoRA adapter's config.
    """
    shards = shards_dir(STEP_DIR_PLACEHOLDER, algorithm)
    plan = merge_plan(shards, f"{context.run_dir}/{FINAL_MODEL_DIR}", context.python)
    return {
        "argv": list(plan.argv),
        "env": dict(plan.env),
        "placeholder": STEP_DIR_PLACEHOLDER,
        "shards": shards,
        "target_dir": FINAL_MODEL_DIR,
        "base_model": context.model_path,
    }
