"""Reward choices: a builtin reward function, or a reward file the user uploaded.

A job's `reward` hyperparameter is a builtin name (`math_answer`, ...) or `file:<name>`;
this module turns it into the file and function a trainer loads. Uploaded files are checked
without being run (training_platform.rewards.files) and stored by content in TP_HOME.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session, col, select

from training_platform.catalog.models import RewardFileEntry
from training_platform.core.errors import Conflict, InvalidInput

FILE_PREFIX = "file:"
MAX_REWARD_FILE_BYTES = 1024 * 1024


def builtin_names() -> list[str]:
    """Names of the builtin reward functions."""
    from training_platform.rewards.builtin import BUILTIN_REWARDS

    return sorted(BUILTIN_REWARDS)


def resolve(
    *, session: Session, choice: str, platform_dir: str, home: Path | None = None
) -> tuple[str, str]:
    """(file, function) for a reward choice; InvalidInput naming the field when unknown."""
    if choice in builtin_names():
        return f"{platform_dir}/rewards/builtin.py", choice
    if choice.startswith(FILE_PREFIX):
        name = choice[len(FILE_PREFIX) :]
        entry = session.exec(select(RewardFileEntry).where(RewardFileEntry.name == name)).first()
        if entry is None:
            raise InvalidInput(
                ("body", "hyperparameters", "reward"),
                f"unknown reward file {name!r}; upload it first (tp rewards upload)",
            )
        path = (home / entry.path) if home is not None else Path(entry.path)
        return str(path), "compute_score"
    raise InvalidInput(
        ("body", "hyperparameters", "reward"),
        f"unknown reward {choice!r}; builtin: {', '.join(builtin_names())}, "
        f"or {FILE_PREFIX}<name> for an uploaded reward file",
    )


def register(
    *, session: Session, home: Path, name: str, source: bytes, description: str = ""
) -> RewardFileEntry:
    """Check a reward file without running it and store it; InvalidInput says what is wrong."""
    from training_platform.rewards.files import check_reward_file

    if session.exec(select(RewardFileEntry).where(RewardFileEntry.name == name)).first():
        raise Conflict(f"a reward file named {name!r} exists already")
    if len(source) > MAX_REWARD_FILE_BYTES:
        raise InvalidInput(("body",), "a reward file may be at most 1 MB")
    try:
        text = source.decode("utf-8")
        check_reward_file(text)
    except (UnicodeDecodeError, ValueError, SyntaxError) as error:
        raise InvalidInput(("body",), f"not a usable reward file: {error}") from None
    digest = hashlib.sha256(source).hexdigest()
    target = home / "rewards" / f"{digest}.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(source)
    entry = RewardFileEntry(
        name=name,
        path=str(target.relative_to(home)),
        sha256=digest,
        size_bytes=len(source),
        description=description,
    )
    session.add(entry)
    session.flush()
    return entry


def list_files(*, session: Session) -> Sequence[RewardFileEntry]:
    """Uploaded reward files, by name."""
    return session.exec(select(RewardFileEntry).order_by(col(RewardFileEntry.name))).all()
