"""Progress records of a training run: metrics.jsonl lines, a heartbeat file, console lines.

metrics.jsonl is a contract read by the platform's supervisor, one JSON object per line, appended
and flushed one at a time and never rewritten:

    {"type": "started", "time": T, "max_steps": N}
    {"type": "metrics", "time": T, "step": N, "values": {"loss": 2.1, ...}}
    {"type": "checkpoint", "time": T, "step": N, "path": "checkpoints/checkpoint-N",
     "final": false, "adapter": false, "size_bytes": B}
    {"type": "summary", "time": T, "step": N, "values": {"train_runtime": 3.2, ...}}
    {"type": "checkpoint", "time": T, "step": N, "path": "model", "final": true, "adapter": false,
     "size_bytes": B}
    {"type": "stopped", "time": T, "step": N}    (instead of summary and final model: the run
                                                  saved a checkpoint at step N on request)

T is ISO-8601 UTC; `path` is relative to the run's output directory; `adapter` is true when the
checkpoint holds a PEFT adapter rather than full weights; `size_bytes` is the total size of the
files in the checkpoint directory when it was recorded (rotation may delete it later). A resumed
run starts its step count where its checkpoint ended, so its first metrics step is larger than
the checkpoint's. `values` keeps the trainer's own key
names and only numbers; a non-finite number is written as null so every line stays strict JSON.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from numbers import Real
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from training_platform.runners.launcher import STOP_FILE


class StoppedOnRequest(Exception):
    """The run saved a checkpoint and stopped because the platform asked (pause, time limit)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped on request at step {step}")
        self.step = step


def stop_requested(run_dir: Path) -> bool:
    """Whether the platform asked this run to checkpoint and stop.

    In a distributed run every rank must stop at the same step, so the ranks agree on the
    answer (any rank that saw the file stops them all).
    """
    seen = (run_dir / STOP_FILE).exists()
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is always there in a training environment
        return seen
    if not (dist.is_available() and dist.is_initialized()):
        return seen
    import torch

    flag = torch.tensor([1 if seen else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# Keys of the trainer's end-of-training log; they go to the summary record, never to metrics.
SUMMARY_KEYS = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_tokens_per_second",
        "total_flos",
        "train_loss",
    }
)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string."""
    return datetime.now(UTC).isoformat()


def directory_size(path: Path) -> int:
    """Total bytes of the regular files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def numeric_values(logs: dict[str, Any]) -> dict[str, float | int | None]:
    """The numeric entries of a trainer log (NaN and infinities kept: the writer marks them)."""
    values: dict[str, float | int | None] = {}
    for key, value in logs.items():
        # bool is an int subclass but not a measurement.
        if isinstance(value, bool) or not isinstance(value, Real):
            continue
        if isinstance(value, int):
            values[key] = value
        else:
            values[key] = float(value)
    return values


def _strict(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a non-finite value is written as null and named in `non_finite`."""
    values = record.get("values")
    if not isinstance(values, dict):
        return record
    marks = {
        key: str(value)  # "nan", "inf" or "-inf"
        for key, value in values.items()
        if isinstance(value, float) and not math.isfinite(value)
    }
    if not marks:
        return record
    cleaned = {key: (None if key in marks else value) for key, value in values.items()}
    return {**record, "values": cleaned, "non_finite": marks}


class ProgressWriter:
    """Appends one JSON record per line to a metrics file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one line; readers see it as soon as this returns."""
        line = json.dumps(_strict(record), allow_nan=False) + "\n"
        # Reopened per record: append mode never rewrites, and closing flushes the line at once.
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(line)

    def started(self, *, max_steps: int) -> None:
        """Record the start of training."""
        self.write({"type": "started", "time": utc_now(), "max_steps": max_steps})

    def metrics(self, *, step: int, values: dict[str, float | int | None]) -> None:
        """Record one log event of the trainer."""
        self.write({"type": "metrics", "time": utc_now(), "step": step, "values": values})

    def checkpoint(
        self, *, step: int, path: str, final: bool, adapter: bool, size_bytes: int
    ) -> None:
        """Record a saved checkpoint; `path` is relative to the run directory."""
        self.write(
            {
                "type": "checkpoint",
                "time": utc_now(),
                "step": step,
                "path": path,
                "final": final,
                "adapter": adapter,
                "size_bytes": size_bytes,
            }
        )

    def stopped(self, *, step: int) -> None:
        """Record that the run stopped on request after its checkpoint at `step`."""
        self.write({"type": "stopped", "time": utc_now(), "step": step})

    def summary(self, *, step: int, values: dict[str, float | int | None]) -> None:
        """Record the trainer's end-of-training figures."""
        self.write({"type": "summary", "time": utc_now(), "step": step, "values": values})


def console_line(step: int, max_steps: int, values: dict[str, float | int | None]) -> str:
    parts = [
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in values.items()
    ]
    return f"step {step}/{max_steps} " + " ".join(parts)


class RunProgressCallback(TrainerCallback):
    """Writes the run's progress records, heartbeat and console lines from trainer events."""

    def __init__(self, writer: ProgressWriter, *, run_dir: Path, adapter: bool) -> None:
        self.writer = writer
        self.run_dir = run_dir
        self.heartbeat = run_dir / "heartbeat"
        self.adapter = adapter
        self.stopped = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the started record."""
        if state.is_world_process_zero:
            self.writer.started(max_steps=state.max_steps)
            self.heartbeat.touch()
            print(f"training started: {state.max_steps} steps")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Touch the heartbeat file; on a stop request, save a checkpoint now and stop."""
        if state.is_world_process_zero:
            self.heartbeat.touch()
        if not self.stopped and stop_requested(self.run_dir):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                print(
                    f"stop requested: saving a checkpoint at step {state.global_step} and stopping"
                )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write a metrics record, or the summary record for the end-of-training log."""
        if not state.is_world_process_zero or not logs:
            return
        values = numeric_values(logs)
        # Only the trainer's final log carries train_loss; every per-step log has loss instead.
        if "train_loss" in values:
            self.writer.summary(step=state.global_step, values=values)
            print("training finished: " + console_line(state.global_step, state.max_steps, values))
            return
        values = {key: value for key, value in values.items() if key not in SUMMARY_KEYS}
        self.writer.metrics(step=state.global_step, values=values)
        print(console_line(state.global_step, state.max_steps, values))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write a checkpoint record for the checkpoint the trainer just saved."""
        if not state.is_world_process_zero:
            return
        # TrainingArguments fills in output_dir when it is not given, so it is never None here.
        checkpoint = Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        path = checkpoint.resolve().relative_to(self.run_dir.resolve()).as_posix()
        self.writer.checkpoint(
            step=state.global_step,
            path=path,
            final=False,
            adapter=self.adapter,
            size_bytes=directory_size(checkpoint),
        )
        print(f"checkpoint saved: {path}")
