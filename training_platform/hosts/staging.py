"""Staging a launch for a remote host: its inputs uploaded once per content, paths rewritten.

The backend plans against the host's paths, never the manager's: the model directory, the
prepared dataset and an uploaded reward file are copied into WORK_ROOT/cache/<sha256>/ (skipped
when that content is there already), the platform's own files are the host's installed copy,
and a checkpoint to resume from lies in the host's run root, where the earlier attempt ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from training_platform.backends.base import LaunchContext
from training_platform.core.settings import Settings
from training_platform.runners.base import RunnerError
from training_platform.runners.ssh import SshRunner

_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def file_digest(path: Path) -> str:
    """sha256 of a file's content, remembered while size and mtime stay the same."""
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _HASHES_LOCK:
        _HASHES[key] = value
    return value


def tree_digest(root: Path) -> str:
    """sha256 over a directory's relative paths and file contents."""
    digest = hashlib.sha256()
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(item.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_digest(item).encode() + b"\n")
    return digest.hexdigest()


def stager(
    settings: Settings, runner: SshRunner, remote_platform_dir: str | None
) -> Callable[[LaunchContext], LaunchContext]:
    """A function that turns a context planned on the manager into the host's."""

    def stage(context: LaunchContext) -> LaunchContext:
        if not remote_platform_dir:
            raise RunnerError(
                f"the platform is not installed on {runner.target.name} "
                f"({runner.python}); run `tp hosts bootstrap {runner.target.name}`"
            )
        model_path = context.model_path
        if context.model_is_local:
            local = Path(context.model_path)
            model_path = runner.upload(local, tree_digest(local))
        dataset = Path(context.dataset_path)
        dataset_path = runner.upload(dataset, file_digest(dataset))
        validation_path = context.validation_path
        if validation_path:
            held = Path(validation_path)
            validation_path = runner.upload(held, file_digest(held))
        reward_path = context.reward_path
        if reward_path:
            reward = Path(reward_path)
            if reward.is_relative_to(context.platform_dir):
                relative = reward.relative_to(context.platform_dir).as_posix()
                reward_path = f"{remote_platform_dir}/{relative}"
            else:
                reward_path = runner.upload(reward, file_digest(reward))
        resume_from = context.resume_from
        if resume_from:
            checkpoint = Path(resume_from)
            if not checkpoint.is_relative_to(settings.runs_dir):
                raise RunnerError(f"checkpoint {resume_from} did not come from a run")
            relative = checkpoint.relative_to(settings.runs_dir).as_posix()
            resume_from = f"{runner.run_root}/{relative}"
            if not runner.exists(resume_from):
                raise RunnerError(
                    f"checkpoint {relative} is not on {runner.target.name}: the attempt that "
                    "wrote it ran elsewhere"
                )
        return dataclasses.replace(
            context,
            model_path=model_path,
            dataset_path=dataset_path,
            validation_path=validation_path,
            reward_path=reward_path,
            resume_from=resume_from,
            platform_dir=remote_platform_dir,
        )

    return stage
