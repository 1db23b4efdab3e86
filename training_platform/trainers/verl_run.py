"""Run a verl command for the platform: `python -m training_platform.trainers.verl_run --config F`.

The config file (written by a verl backend's plan) holds verl's argv and the environment it
needs. This program starts verl as its child in the same process group (its output goes
straight to ours, the job log), forwards SIGTERM/SIGINT to it, and meanwhile turns what verl
writes into the platform's metrics.jsonl records (contract: `trainers/progress.py`):

- verl's `file` logger appends `{"step": N, "data": {...}}` lines to $VERL_FILE_LOGGER_PATH,
  which this program sets; each line becomes a `metrics` record with verl's own keys.
- verl finishes a checkpoint by writing `latest_checkpointed_iteration.txt` next to the
  `global_step_N` directories; every directory up to that step becomes a `checkpoint` record.

After verl exits 0, and when the config has a `final_model`, it converts the last complete
checkpoint (FSDP shards) into a Hugging Face model with `verl.model_merger` (the argv comes from
the config, built by `backends/verl/merge.py`), fills in tokenizer files the merger left out, and
records it as the final checkpoint (`path` "model", `final` true) before the summary. A LoRA run's
`model/` holds the adapter only (`adapter` true), as a TRL LoRA run's does. When verl saved no
checkpoint there is nothing to convert: no final record, and the exit code stays verl's.

When Ray's node did not register in Ray's fixed 30 s (a loaded machine) and verl has recorded no
step, verl is started once more (RAY_START_TIMEOUT, read from the job log our stderr goes to).

It exits with verl's exit code (or dies by verl's signal), 2 when the config is unusable, 3 when
the conversion fails (the checkpoints stay). Standard library only (pyarrow when present, to count
steps): it runs on GPU hosts that have nothing but the training environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any, TypeGuard

EXIT_BAD_CONFIG = 2
EXIT_EXPORT_FAILED = 3
EXIT_NOT_STARTED = 127
POLL_S = 0.5
METRICS_FILE = "metrics.jsonl"
HEARTBEAT_FILE = "heartbeat"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
# What verl's checkpoints keep in `huggingface/` besides config.json: the tokenizer's files.
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "chat_template.*",
    "preprocessor_config.json",
    "processor_config.json",
)
# Ray waits a fixed 30 s for its raylet to register with the GCS (ray/_private/node.py), and
# fails the driver's ray.init with this when a loaded machine takes longer: verl is started
# once more when that is how it ended, before any step.
RAY_START_TIMEOUT = b"The current node timed out during startup"
SHM_DIR = "/dev/shm/"  # noqa: S108 - POSIX shared memory, cleaned up after verl (Leftovers)
ADAPTER_SUBDIR = "lora_adapter"  # where verl.model_merger puts a LoRA run's adapter


@dataclass(frozen=True)
class FinalModel:
    """How to turn the last checkpoint into a Hugging Face model (config key `final_model`)."""

    argv: list[str]  # verl.model_merger's argv; an argument that starts with `placeholder`
    # names a path in the step directory
    env: dict[str, str]
    placeholder: str
    shards: str  # the FSDP shards' directory, with the placeholder
    target: Path  # absolute; the record names it relative to the run dir
    base_model: str | None  # written into a LoRA adapter's config

    def fill(self, text: str, step_dir: Path) -> str:
        """`text` with a leading placeholder replaced by `step_dir`."""
        if text.startswith(self.placeholder):
            return str(step_dir) + text[len(self.placeholder) :]
        return text


@dataclass(frozen=True)
class RunConfig:
    """The wrapper's config file, with paths made absolute."""

    command: list[str]
    env: dict[str, str]
    run_dir: Path
    verl_metrics: Path
    checkpoint_dir: Path
    max_steps: int | None
    steps_from: dict[str, Any] | None
    final_model: FinalModel | None = None


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)


def _env(value: Any, name: str) -> dict[str, str]:
    value = value or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} must map names to strings")
    return {str(k): v for k, v in value.items()}


def _final_model(data: Any, run_dir: Path) -> FinalModel | None:
    """The `final_model` entry, checked; None when absent (no conversion)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("final_model must be an object or null")
    placeholder, shards = data.get("placeholder"), data.get("shards")
    if not isinstance(placeholder, str) or not placeholder:
        raise ValueError("final_model.placeholder must be a non-empty string")
    argv = data.get("argv")
    if not _strings(argv) or not any(a.startswith(placeholder) for a in argv):
        raise ValueError("final_model.argv must be a list of strings naming the placeholder")
    if not isinstance(shards, str) or not shards.startswith(placeholder):
        raise ValueError("final_model.shards must be a path that starts with the placeholder")
    target = PurePosixPath(str(data.get("target_dir") or ""))
    if not target.parts or target.is_absolute() or ".." in target.parts:
        raise ValueError("final_model.target_dir must be a path inside the run dir")
    base_model = data.get("base_model")
    return FinalModel(
        argv=list(argv),
        env=_env(data.get("env"), "final_model.env"),
        placeholder=placeholder,
        shards=shards,
        target=run_dir / target,
        base_model=base_model if isinstance(base_model, str) and base_model else None,
    )


def load_config(path: Path) -> RunConfig:
    """Read and check the config file; ValueError says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("the config must be a JSON object")
    command = data.get("command")
    if not _strings(command):
        raise ValueError("command must be a non-empty list of strings")
    env = _env(data.get("env"), "env")
    run_dir = Path(str(data.get("run_dir") or path.parent)).resolve()
    max_steps = data.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError("max_steps must be a positive integer or null")
    steps_from = data.get("steps_from")
    return RunConfig(
        command=command,
        env=env,
        run_dir=run_dir,
        verl_metrics=run_dir / str(data.get("verl_metrics", "verl_metrics.jsonl")),
        checkpoint_dir=run_dir / str(data.get("checkpoint_dir", "checkpoints")),
        max_steps=max_steps,
        steps_from=steps_from if isinstance(steps_from, dict) else None,
        final_model=_final_model(data.get("final_model"), run_dir),
    )


def count_steps(steps_from: dict[str, Any] | None) -> int | None:
    """Steps verl runs for `epochs` over a parquet file, counted as verl does; None if unknown."""
    if not steps_from:
        return None
    try:
        import pyarrow.parquet as pq  # optional: only to count rows

        rows = int(pq.read_metadata(str(steps_from["dataset"])).num_rows)
        processes = max(int(steps_from.get("data_parallel", 1)), 1)
        per_process_batch = int(steps_from["batch_size"]) // processes
        epochs = int(steps_from["epochs"])
    except (ImportError, OSError, KeyError, TypeError, ValueError):
        return None
    if per_process_batch < 1:
        return None
    # Each rank's sampler drops the remainder, then the loader drops its last short batch.
    steps = (rows // processes) // per_process_batch * epochs
    return steps or None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _numbers(data: Any) -> dict[str, float | int | None]:
    """The numeric entries of one verl log line (non-finite ones are marked when written)."""
    values: dict[str, float | int | None] = {}
    if not isinstance(data, dict):
        return values
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values[str(key)] = value
    return values


def _strict(values: dict[str, float | int | None]) -> tuple[dict[str, Any], dict[str, str]]:
    """JSON has no NaN: non-finite values become null and are named apart."""
    marks = {k: str(v) for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}
    return {k: (None if k in marks else v) for k, v in values.items()}, marks


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class Progress:
    """Appends the platform's records to metrics.jsonl and touches the heartbeat."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / METRICS_FILE
        self.heartbeat = run_dir / HEARTBEAT_FILE
        self.last_step = 0
        self.last_values: dict[str, float | int | None] = {}

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line; readers see it as soon as this returns."""
        line = json.dumps({**record, "time": _now()}, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(line)

    def started(self, max_steps: int | None) -> None:
        """The run began."""
        self.write({"type": "started", "max_steps": max_steps})
        self.heartbeat.touch()

    def metrics(self, step: int, values: dict[str, float | int | None]) -> None:
        """One log event of verl; NaN and infinities as null, named in `non_finite`."""
        cleaned, marks = _strict(values)
        self.write(
            {"type": "metrics", "step": step, "values": cleaned}
            | ({"non_finite": marks} if marks else {})
        )
        self.last_step, self.last_values = max(self.last_step, step), values
        self.heartbeat.touch()

    def checkpoint(self, step: int, directory: Path) -> None:
        """A finished checkpoint directory."""
        path = directory.relative_to(self.run_dir).as_posix()
        self.write(
            {
                "type": "checkpoint",
                "step": step,
                "path": path,
                "final": False,
                "adapter": False,
                "size_bytes": _size(directory),
            }
        )
        print(f"[verl_run] checkpoint saved: {path}", flush=True)

    def final_model(self, step: int, directory: Path, *, adapter: bool) -> None:
        """The run's output model, converted from its last checkpoint."""
        path = directory.relative_to(self.run_dir).as_posix()
        self.write(
            {
                "type": "checkpoint",
                "step": step,
                "path": path,
                "final": True,
                "adapter": adapter,
                "size_bytes": _size(directory),
            }
        )
        print(f"[verl_run] saved final {'adapter' if adapter else 'model'} to {path}", flush=True)

    def summary(self, runtime_s: float) -> None:
        """The run's last figures, after verl exited successfully."""
        values, _ = _strict({**self.last_values, "train_runtime": round(runtime_s, 3)})
        self.write({"type": "summary", "step": self.last_step, "values": values})


class VerlLogTail:
    """Reads the complete new lines of verl's JSONL metrics file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[tuple[int, dict[str, float | int | None]]]:
        """(step, values) of every line completed since the last call."""
        try:
            with self.path.open("rb") as source:
                if source.seek(0, os.SEEK_END) < self.offset:
                    self.offset, self.partial = 0, b""  # verl reopened it (mode "wb")
                source.seek(self.offset)
                chunk = source.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        found = []
        for line in lines:
            try:
                entry = json.loads(line)
                step = int(entry["step"])
            except (ValueError, KeyError, TypeError):
                continue
            found.append((step, _numbers(entry.get("data"))))
        return found


class CheckpointWatch:
    """Finds the `global_step_N` directories that verl has finished writing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.reported: set[int] = set()

    def finished(self) -> list[tuple[int, Path]]:
        """New complete checkpoints, oldest first."""
        try:
            latest = int((self.directory / TRACKER_FILE).read_text().strip())
            entries = list(self.directory.iterdir())
        except (OSError, ValueError):
            return []
        found = []
        for entry in entries:
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir():
                step = int(match.group(1))
                if step <= latest and step not in self.reported:
                    found.append((step, entry))
        found.sort()
        self.reported.update(step for step, _ in found)
        return found


def last_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest complete `global_step_N` directory (verl's tracker names N or later)."""
    try:
        latest = int((directory / TRACKER_FILE).read_text().strip())
        entries = list(directory.iterdir())
    except (OSError, ValueError):
        return None
    found = []
    for entry in entries:
        match = _STEP_DIR.match(entry.name)
        if match and int(match.group(1)) <= latest and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return max(found) if found else None


class Children:
    """The wrapper's child processes, one at a time, with SIGTERM/SIGINT forwarded to them."""

    def __init__(self) -> None:
        self.current: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None

    def forward(self, signum: int, _frame: FrameType | None) -> None:
        """Signal handler: pass the signal on to the running child and remember it."""
        self.stop_signal = signum
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                self.current.send_signal(signum)

    def start(self, argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start `argv`; OSError when it cannot be started."""
        self.current = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
        return self.current


class Leftovers:
    """What verl's process tree starts that can outlive verl, found while the run lasts and
    removed when it has ended, whatever its end.

    Ray's workers start sessions of their own (a cancel that ends the wrapper's process group
    misses them) and are reparented when their raylet ends; vLLM and verl's weight transfer on
    CPU keep POSIX shared memory in /dev/shm, which a crashed run leaves behind (gigabytes for
    a real model). Every SCAN_S this walks /proc for verl's descendants, and for the processes
    seen before (their own children too), and notes each process (by pid and start time, so a
    reused pid is never taken for it) and every /dev/shm file it maps or holds open. Only those
    are killed and removed: another run's segments on the same host are never touched.
    """

    SCAN_S = 2.0

    def __init__(self, root: int, proc: Path = Path("/proc"), shm: str = SHM_DIR) -> None:
        self.root = root
        self.proc = proc
        self.shm = shm
        self.processes: dict[int, str] = {}  # pid -> start time (field 22 of /proc/PID/stat)
        self.segments: set[str] = set()
        self._scanned = 0.0

    def _stat(self, pid: int) -> tuple[int, str] | None:
        """(parent pid, start time), or None when the process is gone."""
        try:
            text = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) < 20 or not fields[1].isdigit():
            return None
        return int(fields[1]), fields[19]

    def _alive(self, pid: int) -> bool:
        stat = self._stat(pid)
        return stat is not None and stat[1] == self.processes[pid]

    def _note_segments(self, pid: int) -> None:
        base = self.proc / str(pid)
        with contextlib.suppress(OSError):
            for line in (base / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                if (
                    len(fields) == 6
                    and fields[5].startswith(self.shm)
                    and not fields[5].endswith(" (deleted)")
                ):
                    self.segments.add(fields[5])
        with contextlib.suppress(OSError):
            for fd in (base / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = str(fd.readlink())
                    if target.startswith(self.shm) and not target.endswith(" (deleted)"):
                        self.segments.add(target)

    def scan(self, force: bool = False) -> None:
        """Note verl's process tree and its shared memory (at most every SCAN_S)."""
        now = time.monotonic()
        if not force and now - self._scanned < self.SCAN_S:
            return
        self._scanned = now
        children: dict[int, list[int]] = {}
        starts: dict[int, str] = {}
        for entry in self.proc.iterdir():
            if entry.name.isdigit() and (stat := self._stat(int(entry.name))) is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
                starts[int(entry.name)] = stat[1]
        known = [p for p, start in self.processes.items() if starts.get(p) == start]
        todo = [self.root, *known]
        while todo:
            pid = todo.pop()
            if pid in starts and pid != os.getpid():
                self.processes.setdefault(pid, starts[pid])
                self._note_segments(pid)
            todo.extend(c for c in children.get(pid, []) if c not in self.processes)

    def clean(self) -> None:
        """Kill what is still alive of the processes seen, then remove their shared memory."""
        self.scan(force=True)
        killed = 0
        for pid in list(self.processes):
            if pid != self.root and self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        removed = 0
        freed = 0
        for path in sorted(self.segments):
            with contextlib.suppress(OSError):
                size = Path(path).stat().st_size
                Path(path).unlink()
                removed += 1
                freed += size
        if killed or removed:
            _log(
                f"cleaned up after verl: {killed} leftover process(es) killed, "
                f"{removed} shared memory file(s) removed ({freed / 2**20:.1f} MiB)"
            )


def _own_log() -> Path | None:
    """The file our output goes to (the job log), when it is a regular file."""
    try:
        path = Path("/proc/self/fd/2").readlink()
    except OSError:
        return None
    return path if path.is_file() else None


def _wrote(log: Path | None, mark: int, text: bytes) -> bool:
    """Whether `text` is in what was appended to `log` after its first `mark` bytes."""
    if log is None:
        return False
    try:
        with log.open("rb") as stream:
            stream.seek(mark)
            return text in stream.read()
    except OSError:
        return False


def _log(message: str) -> None:
    print(f"[verl_run] {message}", flush=True)


def _copy_missing(source: Path, target: Path, patterns: tuple[str, ...]) -> list[str]:
    """Copy the files of `source` matching `patterns` that `target` lacks; their names."""
    copied: list[str] = []
    if not source.is_dir():
        return copied
    for file in sorted(source.iterdir()):
        if (
            file.is_file()
            and any(file.match(pattern) for pattern in patterns)
            and not (target / file.name).exists()
        ):
            shutil.copy2(file, target / file.name)
            copied.append(file.name)
    return copied


def _adapter_only(final: FinalModel) -> Path:
    """Leave only the merger's LoRA adapter (and the tokenizer) in the target directory.

    verl.model_merger writes the base model's own weights to the target and the trained
    adapter to `lora_adapter/`; the output is the adapter, as a TRL LoRA run's `model/` is.
    """
    target = final.target
    staging = target.with_name(target.name + ".adapter")
    if staging.exists():
        shutil.rmtree(staging)
    (target / ADAPTER_SUBDIR).rename(staging)
    _copy_missing(target, staging, TOKENIZER_FILES)
    shutil.rmtree(target)
    staging.rename(target)
    adapter_config = target / "adapter_config.json"
    settings = json.loads(adapter_config.read_text())
    if not settings.get("base_model_name_or_path") and final.base_model:
        settings["base_model_name_or_path"] = final.base_model
        adapter_config.write_text(json.dumps(settings, indent=2) + "\n")
    return target


def export_final_model(
    config: RunConfig, final: FinalModel, progress: Progress, children: Children
) -> int:
    """Convert the last complete checkpoint into `final.target` and record it; 0 when done.

    No checkpoint is not an error (nothing to convert); a failed conversion is.
    """
    found = last_checkpoint(config.checkpoint_dir)
    if found is None:
        _log(
            f"no final model: verl saved no complete checkpoint in {config.checkpoint_dir} "
            "(save_freq never reached?); the job has no output model"
        )
        return 0
    step, step_dir = found
    shards = Path(final.fill(final.shards, step_dir))
    checkpoint = step_dir.relative_to(config.run_dir).as_posix()
    target = final.target.relative_to(config.run_dir).as_posix()

    def failed(why: str) -> int:
        _log(f"final model conversion FAILED: {why}; the checkpoints stay in {checkpoint}")
        return EXIT_EXPORT_FAILED

    if not shards.is_dir():
        return failed(f"no FSDP shards at {shards}")
    if children.stop_signal is not None:
        _log("stopped before the final model conversion")
        return -children.stop_signal
    if final.target.exists():
        _log(f"replacing the {target}/ an earlier attempt left")
        shutil.rmtree(final.target)
    argv = [final.fill(part, step_dir) for part in final.argv]
    _log(f"converting {checkpoint} to a Hugging Face model in {target}/: {' '.join(argv)}")
    try:
        merger = children.start(argv, config.run_dir, {**os.environ, **final.env})
    except OSError as error:
        return failed(f"cannot start {argv[0]}: {error}")
    while merger.poll() is None:
        progress.heartbeat.touch()
        time.sleep(POLL_S)
    if merger.returncode < 0 and children.stop_signal is not None:
        return merger.returncode  # stopped: die by the same signal
    if merger.returncode != 0:
        return failed(f"the merger exited with {merger.returncode}")
    adapter = (final.target / ADAPTER_SUBDIR / "adapter_config.json").is_file()
    try:
        model_dir = _adapter_only(final) if adapter else final.target
        if not adapter and not (model_dir / "config.json").is_file():
            return failed(f"the merger wrote no config.json into {target}/")
        copied = _copy_missing(shards / "huggingface", model_dir, TOKENIZER_FILES)
    except (OSError, ValueError) as error:
        return failed(f"cannot finish {target}/: {error}")
    if copied:
        _log(f"copied the tokenizer files the merger left out: {', '.join(copied)}")
    if not (model_dir / "tokenizer_config.json").is_file():
        _log(f"warning: {target}/ has no tokenizer (the checkpoint had none)")
    progress.final_model(step, model_dir, adapter=adapter)
    return 0


def run(config: RunConfig) -> int:
    """Run verl to its end, recording progress, then convert its last checkpoint.

    Returns verl's return code, or the conversion's failure.
    """
    progress = Progress(config.run_dir)
    tail = VerlLogTail(config.verl_metrics)
    checkpoints = CheckpointWatch(config.checkpoint_dir)
    progress.started(config.max_steps or count_steps(config.steps_from))
    env = {**os.environ, **config.env, "VERL_FILE_LOGGER_PATH": str(config.verl_metrics)}
    started = time.monotonic()
    children = Children()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, children.forward)

    def pump() -> None:
        for step, values in tail.read():
            progress.metrics(step, values)
        for step, directory in checkpoints.finished():
            progress.checkpoint(step, directory)

    log = _own_log()
    for attempt in (1, 2):
        mark = log.stat().st_size if log is not None else 0
        try:
            child = children.start(config.command, config.run_dir, env)
        except OSError as error:
            print(f"verl_run: cannot start {config.command[0]}: {error}", file=sys.stderr)
            return EXIT_NOT_STARTED
        leftovers = Leftovers(child.pid)
        try:
            while child.poll() is None:
                pump()
                leftovers.scan()
                time.sleep(POLL_S)
        finally:
            leftovers.clean()
        pump()  # what verl wrote just before it exited
        if (
            attempt == 1
            and child.returncode != 0
            and children.stop_signal is None
            and progress.last_step == 0
            and _wrote(log, mark, RAY_START_TIMEOUT)
        ):
            _log("Ray's node did not register in Ray's fixed 30 s (a loaded machine): once more")
            continue
        break
    if child.returncode != 0:
        return child.returncode
    if config.final_model is not None:
        code = export_final_model(config, config.final_model, progress, children)
        if code != 0:
            return code
    progress.summary(time.monotonic() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (a signal death is passed on as such)."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.verl_run")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config.resolve())
    except ValueError as error:
        print(f"verl_run: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    returncode = run(config)
    if returncode < 0:
        # Die the way verl died, so that the launcher records the signal, not a code.
        signum = -returncode
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum  # reached only for a signal whose default is to be ignored
    return returncode


if __name__ == "__main__":
    sys.exit(main())
