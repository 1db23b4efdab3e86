"""Dataset service: check an upload row by row, store it by content, prepare it for a backend.

Functions flush; callers commit. No HTTP, no Celery.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import Conflict, InvalidInput
from training_platform.core.settings import Settings
from training_platform.datasets import formats, reader

MAX_REPORTED_ERRORS = 20
# Bump when a conversion changes: prepared files of the old version are then rebuilt.
CONVERTER_VERSION = 2  # 2: rl rows keep their labels (extra_info.labels)


class UploadTooLarge(InvalidInput):
    """The upload passed the size limit."""

    status_code = 413


@dataclass
class Inspection:
    """What a dataset file holds: its format, how many rows, which rows are bad."""

    format: str | None
    rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    bad_rows: int = 0

    def describe_errors(self) -> str:
        """A message listing bad rows by number."""
        shown = "; ".join(f"row {number}: {message}" for number, message in self.errors)
        more = self.bad_rows - len(self.errors)
        return shown + (f"; and {more} more" if more > 0 else "")


def inspect(path: Path, fmt: str | None = None) -> Inspection:
    """Read every row, detect the format from the first one unless given, check them all."""
    if fmt is not None and fmt not in formats.SOURCE_FORMATS:
        raise InvalidInput(
            ("query", "format"),
            f"unknown format {fmt!r}; one of {', '.join(formats.SOURCE_FORMATS)}",
        )
    result = Inspection(format=fmt)
    try:
        for number, row in reader.rows(path):
            if result.format is None and isinstance(row, dict):
                result.format = formats.detect_format(row)
                if result.format is None:
                    raise InvalidInput(
                        ("body",),
                        f"row {number}: cannot tell the format from its keys "
                        f"({', '.join(sorted(row)) or 'none'}); give format= explicitly",
                    )
            result.rows += 1
            try:
                if isinstance(row, Exception):
                    raise formats.RowError(str(row))
                assert result.format is not None
                formats.convert_row(
                    result.format, formats.TASK_OF_FORMAT[result.format], row, number
                )
            except formats.RowError as error:
                result.bad_rows += 1
                if len(result.errors) < MAX_REPORTED_ERRORS:
                    result.errors.append((number, str(error)))
    except reader.UnreadableFile as error:
        raise InvalidInput(("body",), str(error)) from None
    if result.rows == 0:
        raise InvalidInput(("body",), "the dataset has no rows")
    return result


class IncomingFile:
    """An upload being written inside TP_HOME, hashed and size-checked chunk by chunk.

    Nothing larger than the limit reaches the disk; abort() removes what was written.
    """

    def __init__(self, settings: Settings, filename: str) -> None:
        suffix = Path(filename).suffix.lower()
        if suffix not in reader.SUFFIXES:
            raise InvalidInput(
                ("query", "filename"),
                f"unsupported file type {suffix!r}; use {', '.join(reader.SUFFIXES)}",
            )
        incoming = settings.datasets_dir / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        self.path = incoming / f"{uuid.uuid4().hex}{suffix}"
        self.limit = settings.max_upload_mb * 1024 * 1024
        self.limit_mb = settings.max_upload_mb
        self.size = 0
        self._digest = hashlib.sha256()
        self._handle = self.path.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append a chunk; UploadTooLarge (and nothing kept) past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise UploadTooLarge(("body",), f"the upload exceeds the limit of {self.limit_mb} MB")
        self._digest.update(chunk)
        self._handle.write(chunk)

    def finish(self) -> str:
        """Close the file; its SHA-256."""
        self._handle.close()
        return self._digest.hexdigest()

    def abort(self) -> None:
        """Close and remove the partial file."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


def receive(settings: Settings, chunks: Iterable[bytes], filename: str) -> tuple[Path, str, int]:
    """Stream chunks into an IncomingFile; (path, sha256, size)."""
    incoming = IncomingFile(settings, filename)
    try:
        for chunk in chunks:
            incoming.write(chunk)
    except BaseException:
        incoming.abort()
        raise
    return incoming.path, incoming.finish(), incoming.size


def register_upload(
    *,
    session: Session,
    settings: Settings,
    name: str,
    received: Path,
    sha256: str,
    size: int,
    fmt: str | None,
    description: str,
) -> DatasetEntry:
    """Check a received file row by row and register it; the file is removed if refused."""
    try:
        if session.exec(select(DatasetEntry).where(DatasetEntry.name == name)).first():
            raise Conflict(f"a dataset named {name!r} exists already")
        found = inspect(received, fmt)
        if found.errors:
            raise InvalidInput(
                ("body",),
                f"{found.bad_rows} of {found.rows} rows do not fit format {found.format!r}: "
                + found.describe_errors(),
            )
        stored = settings.datasets_dir / "uploads" / f"{sha256}{received.suffix}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        if stored.exists():
            received.unlink()
        else:
            received.replace(stored)
    finally:
        received.unlink(missing_ok=True)
    assert found.format is not None
    entry = DatasetEntry(
        name=name,
        source="upload",
        path=str(stored.relative_to(settings.home)),
        format=found.format,
        rows=found.rows,
        size_bytes=size,
        sha256=sha256,
        description=description,
    )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class Prepared:
    """A dataset converted for a data task."""

    task: str
    path: Path
    sha256: str
    rows: int

    def as_input(self, home: Path, source: DatasetEntry) -> dict[str, Any]:
        """What is recorded on the job."""
        return {
            "task": self.task,
            "path": str(self.path.relative_to(home)),
            "sha256": self.sha256,
            "rows": self.rows,
            "source": {"id": source.id, "name": source.name, "sha256": source.sha256},
        }


def prepared_path(settings: Settings, entry: DatasetEntry, task: str) -> Path:
    """Where the dataset prepared for `task` lives (pure: nothing is checked or built)."""
    return (
        settings.datasets_dir / "prepared" / task / f"{entry.sha256}-v{CONVERTER_VERSION}.parquet"
    )


def prepare(settings: Settings, entry: DatasetEntry, task: str) -> Prepared:
    """The dataset as a Parquet file for `task`, built once per content and converter version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not formats.can_feed(entry.format, task):
        raise InvalidInput(("body", "dataset"), f"format {entry.format!r} cannot feed {task!r}")
    source = catalog.managed_path(settings.home, entry.path)
    target = prepared_path(settings, entry, task)
    if not target.exists():
        converted, errors = [], []
        for number, row in reader.rows(source):
            try:
                if isinstance(row, Exception):
                    raise formats.RowError(str(row))
                converted.append(formats.convert_row(entry.format, task, row, number))
            except formats.RowError as error:
                errors.append(f"row {number}: {error}")
        if errors:  # uploads are checked, so this means the file changed under us
            raise InvalidInput(("body", "dataset"), "; ".join(errors[:MAX_REPORTED_ERRORS]))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        pq.write_table(pa.Table.from_pylist(converted), temporary)
        temporary.replace(target)
    digest, _ = catalog.file_digest(target)
    rows = pq.ParquetFile(target).metadata.num_rows
    return Prepared(task=task, path=target, sha256=digest, rows=int(rows))


def delete(*, session: Session, settings: Settings, entry: DatasetEntry, in_use: bool) -> None:
    """Remove an uploaded dataset no job refers to."""
    if entry.source == "builtin":
        raise Conflict(f"dataset {entry.name!r} is bundled with the platform")
    if in_use:
        raise Conflict(f"dataset {entry.name!r} is used by jobs; delete those first")
    path = catalog.managed_path(settings.home, entry.path)
    session.delete(entry)
    session.flush()
    others = session.exec(select(DatasetEntry).where(DatasetEntry.sha256 == entry.sha256)).first()
    if others is None:
        path.unlink(missing_ok=True)


def describe(entry: DatasetEntry) -> dict[str, Any]:
    """Public fields of a dataset (no server path)."""
    return {
        "id": entry.id,
        "name": entry.name,
        "source": entry.source,
        "format": entry.format,
        "task": formats.TASK_OF_FORMAT.get(entry.format),
        "rows": entry.rows,
        "size_bytes": entry.size_bytes,
        "sha256": entry.sha256,
        "description": entry.description,
        "created_at": entry.created_at,
    }
