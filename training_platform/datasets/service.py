"""Dataset service: check an upload row by row, store it by content, prepare it for a backend.

Functions flush; callers commit. No HTTP, no Celery.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlmodel import Session, col, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.datasets import formats, reader, versions
from training_platform.datasets.models import DatasetVersion

MAX_REPORTED_ERRORS = 20
# Bump when a conversion changes: prepared files of the old version are then rebuilt.
# 2: rl rows keep their labels (extra_info.labels); 3: a preference prompt is a list of messages
CONVERTER_VERSION = 3


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
    rule: str = ""  # why the format was chosen: the rule that fired, or "given"
    preview: list[dict[str, Any]] = field(default_factory=list)  # first rows, normalised

    def describe_errors(self) -> str:
        """A message listing bad rows by number."""
        shown = "; ".join(f"row {number}: {message}" for number, message in self.errors)
        more = self.bad_rows - len(self.errors)
        return shown + (f"; and {more} more" if more > 0 else "")


PREVIEW_ROWS = 5


def _detect(number: int, row: dict[str, Any]) -> formats.Detection:
    found = formats.detect(row)
    if found.ambiguous:
        raise InvalidInput(
            ("query", "format"),
            f"row {number} fits several formats ("
            + "; ".join(formats.describe_rule(f) for f in found.candidates)
            + "); give format= explicitly",
        )
    if found.format is None:
        raise InvalidInput(
            ("body",),
            f"row {number}: cannot tell the format from its keys "
            f"({', '.join(sorted(row)) or 'none'}); the formats are "
            + "; ".join(formats.describe_rule(f) for f in formats.SOURCE_FORMATS)
            + "; or give format= explicitly",
        )
    return found


def inspect(path: Path, fmt: str | None = None) -> Inspection:
    """Read every row, detect the format from the first one unless given, check them all."""
    if fmt is not None and fmt not in formats.SOURCE_FORMATS:
        raise InvalidInput(
            ("query", "format"),
            f"unknown format {fmt!r}; one of {', '.join(formats.SOURCE_FORMATS)}",
        )
    result = Inspection(format=fmt, rule="given" if fmt else "")
    try:
        for number, row in reader.rows(path):
            if result.format is None and isinstance(row, dict):
                found = _detect(number, row)
                result.format, result.rule = found.format, found.rule
            result.rows += 1
            try:
                if isinstance(row, Exception):
                    raise formats.RowError(str(row))
                assert result.format is not None
                converted = formats.convert_row(
                    result.format, formats.TASK_OF_FORMAT[result.format], row, number
                )
                if len(result.preview) < PREVIEW_ROWS:
                    result.preview.append(converted)
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
    new_version: bool = False,
    project_id: int | None = None,
    visible: set[int] | None = None,
) -> DatasetEntry:
    """Check a received file row by row and register it (in `project_id`), or add it as the
    name's next version (`new_version`; a dataset of a project outside `visible`, unless None,
    is refused as one that does not exist); the received file is removed whatever happens."""
    try:
        entry = session.exec(select(DatasetEntry).where(DatasetEntry.name == name)).first()
        owner = entry.project_id if entry is not None else None
        if new_version and visible is not None and owner is not None and owner not in visible:
            raise NotFound(f"dataset {name} not found")
        if entry is not None and not new_version:
            raise Conflict(
                f"a dataset named {name!r} exists already; upload with new_version=true "
                "to add a version"
            )
        if entry is not None and entry.source == "builtin":
            raise Conflict(f"dataset {name!r} is bundled with the platform")
        found = inspect(received, fmt)
        if found.errors:
            raise InvalidInput(
                ("body",),
                f"{found.bad_rows} of {found.rows} rows do not fit format {found.format!r}: "
                + found.describe_errors(),
            )
        assert found.format is not None
        if entry is not None:
            _check_next_version(entry, found.format, sha256)
        stored = settings.datasets_dir / "uploads" / f"{sha256}{received.suffix}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        if stored.exists():
            received.unlink()
        else:
            received.replace(stored)
    finally:
        received.unlink(missing_ok=True)
    parent = entry.version if entry is not None else None
    if entry is None:
        entry = DatasetEntry(
            name=name,
            source="upload",
            path="",
            format="",
            rows=0,
            size_bytes=0,
            sha256="",
            project_id=project_id,
        )
    entry.path = str(stored.relative_to(settings.home))
    entry.format, entry.rows, entry.size_bytes, entry.sha256 = (
        found.format,
        found.rows,
        size,
        sha256,
    )
    if description or parent is None:
        entry.description = description
    session.add(entry)
    session.flush()
    versions.record(
        session=session, entry=entry, origin="upload", parent=parent, detected_by=found.rule
    )
    return entry


def _check_next_version(entry: DatasetEntry, fmt: str, sha256: str) -> None:
    if entry.sha256 == sha256:
        raise Conflict(f"the file is the same as version {entry.version} of {entry.name!r}")
    if formats.TASK_OF_FORMAT[fmt] != formats.TASK_OF_FORMAT[entry.format]:
        raise InvalidInput(
            ("query", "new_version"),
            f"dataset {entry.name!r} holds {formats.TASK_OF_FORMAT[entry.format]} data "
            f"(format {entry.format!r}); a file of format {fmt!r} cannot be its next version",
        )


@dataclass(frozen=True)
class Held:
    """The validation rows of a split, prepared as their own file."""

    path: Path
    sha256: str
    rows: int
    split: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A dataset converted for a data task (without its validation rows, if it has a split)."""

    task: str
    path: Path
    sha256: str
    rows: int
    validation: Held | None = None

    def as_input(self, home: Path, source: DatasetEntry, version: DatasetVersion) -> dict[str, Any]:
        """What is recorded on the job."""
        return {
            "task": self.task,
            "path": str(self.path.relative_to(home)),
            "sha256": self.sha256,
            "rows": self.rows,
            "source": {
                "id": source.id,
                "name": source.name,
                "version": version.number,
                "sha256": version.sha256,
            },
        } | (
            {
                "validation": {
                    "path": str(self.validation.path.relative_to(home)),
                    "sha256": self.validation.sha256,
                    "rows": self.validation.rows,
                    "split": self.validation.split,
                }
            }
            if self.validation is not None
            else {}
        )


def split_key(split: dict[str, Any] | None) -> str:
    """A short name of a split for file names ('' without one)."""
    if not split:
        return ""
    canonical = json.dumps(split, sort_keys=True, separators=(",", ":"))
    return "-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def prepared_path(
    settings: Settings,
    entry: DatasetEntry | DatasetVersion,
    task: str,
    split: dict[str, Any] | None = None,
    part: str = "train",
) -> Path:
    """Where the dataset prepared for `task` lives (pure: nothing is checked or built); with a
    split, `part` is train or validation."""
    name = f"{entry.sha256}-v{CONVERTER_VERSION}{split_key(split)}"
    if split:
        name += f"-{part}"
    return settings.datasets_dir / "prepared" / task / f"{name}.parquet"


def held_out(numbers: list[int], rows: dict[int, Any], split: dict[str, Any]) -> set[int]:
    """The row numbers a split holds out: a seeded random fraction (at least one row), or the
    rows whose field equals the value."""
    if split.get("fraction") is not None:
        count = max(1, round(float(split["fraction"]) * len(numbers)))
        drawn = random.Random(int(split.get("seed", 0)))  # noqa: S311 (a reproducible draw)
        return set(drawn.sample(sorted(numbers), count))
    field_name, value = split["field"], split["value"]
    return {
        n
        for n in numbers
        if isinstance(rows[n], dict) and field_name in rows[n] and rows[n][field_name] == value
    }


def _write(rows: list[dict[str, Any]], target: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    pq.write_table(pa.Table.from_pylist(rows), temporary)
    temporary.replace(target)


def prepare(
    settings: Settings,
    entry: DatasetEntry | DatasetVersion,
    task: str,
    split: dict[str, Any] | None = None,
) -> Prepared:
    """The dataset as a Parquet file for `task`, built once per content, converter version and
    split; with a split, the held-out rows go to a second file."""
    import pyarrow.parquet as pq

    if not formats.can_feed(entry.format, task):
        raise InvalidInput(("body", "dataset"), f"format {entry.format!r} cannot feed {task!r}")
    source = catalog.managed_path(settings.home, entry.path)
    target = prepared_path(settings, entry, task, split)
    held_path = prepared_path(settings, entry, task, split, "validation") if split else None
    if not target.exists() or (held_path is not None and not held_path.exists()):
        converted: dict[int, dict[str, Any]] = {}
        originals: dict[int, Any] = {}
        errors = []
        for number, row in reader.rows(source):
            try:
                if isinstance(row, Exception):
                    raise formats.RowError(str(row))
                converted[number] = formats.convert_row(entry.format, task, row, number)
                originals[number] = row
            except formats.RowError as error:
                errors.append(f"row {number}: {error}")
        if errors:  # uploads are checked, so this means the file changed under us
            raise InvalidInput(("body", "dataset"), "; ".join(errors[:MAX_REPORTED_ERRORS]))
        numbers = sorted(converted)
        held = held_out(numbers, originals, split) if split else set()
        if split and (not held or len(held) == len(numbers)):
            raise InvalidInput(
                ("body", "validation"),
                f"the split holds out {len(held)} of {len(numbers)} rows; it must leave rows "
                "on both sides",
            )
        _write([converted[n] for n in numbers if n not in held], target)
        if held_path is not None:
            _write([converted[n] for n in numbers if n in held], held_path)
    digest, _ = catalog.file_digest(target)
    rows = pq.ParquetFile(target).metadata.num_rows
    validation = None
    if held_path is not None and split is not None:
        held_digest, _ = catalog.file_digest(held_path)
        validation = Held(
            held_path, held_digest, int(pq.ParquetFile(held_path).metadata.num_rows), split
        )
    return Prepared(task=task, path=target, sha256=digest, rows=int(rows), validation=validation)


def delete(*, session: Session, settings: Settings, entry: DatasetEntry, in_use: bool) -> None:
    """Remove an uploaded dataset no job refers to, with its versions and their files (a file
    another dataset also holds stays)."""
    if entry.source == "builtin":
        raise Conflict(f"dataset {entry.name!r} is bundled with the platform")
    if in_use:
        raise Conflict(f"dataset {entry.name!r} is used by jobs; delete those first")
    held = versions.of_dataset(session=session, entry=entry)
    files = {v.path: v.sha256 for v in held} | {entry.path: entry.sha256}
    session.execute(sql_delete(DatasetVersion).where(col(DatasetVersion.dataset_id) == entry.id))
    session.delete(entry)
    session.flush()
    for path, sha256 in files.items():
        kept = session.exec(
            select(DatasetVersion.id).where(DatasetVersion.sha256 == sha256)
        ).first()
        if (
            kept is None
            and not session.exec(
                select(DatasetEntry.id).where(DatasetEntry.sha256 == sha256)
            ).first()
        ):
            catalog.managed_path(settings.home, path).unlink(missing_ok=True)


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
        "version": entry.version,
        "description": entry.description,
        "created_at": entry.created_at,
    }


def row_key(row: Any) -> str:
    """A row's identity for diffs and exact duplicates: its canonical JSON."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _source_rows(settings: Settings, version: DatasetVersion) -> Iterator[tuple[int, Any]]:
    path = catalog.managed_path(settings.home, version.path)
    for number, row in reader.rows(path):
        if not isinstance(row, Exception):
            yield number, row


def diff(
    settings: Settings, base: DatasetVersion, other: DatasetVersion, *, limit: int = 20
) -> dict[str, Any]:
    """Rows added and removed from `base` to `other`, as multisets of canonical rows."""
    counts: Counter[str] = Counter(row_key(row) for _, row in _source_rows(settings, base))
    added: list[dict[str, Any]] = []
    unchanged = 0
    added_count = 0
    for number, row in _source_rows(settings, other):
        key = row_key(row)
        if counts[key] > 0:
            counts[key] -= 1
            unchanged += 1
        else:
            added_count += 1
            if len(added) < limit:
                added.append({"row": number, "data": row})
    removed: list[dict[str, Any]] = []
    removed_count = 0
    for number, row in _source_rows(settings, base):
        key = row_key(row)
        if counts[key] > 0:
            counts[key] -= 1
            removed_count += 1
            if len(removed) < limit:
                removed.append({"row": number, "data": row})
    return {
        "base": base.number,
        "other": other.number,
        "added": added_count,
        "removed": removed_count,
        "unchanged": unchanged,
        "added_rows": added,
        "removed_rows": removed,
    }


def rows_page(
    settings: Settings, version: DatasetVersion, *, offset: int, limit: int, query: str = ""
) -> dict[str, Any]:
    """A page of a version's rows; with a query, only rows whose text contains it (any case)."""
    needle = query.casefold()
    page: list[dict[str, Any]] = []
    total = 0
    for number, row in _source_rows(settings, version):
        if needle and needle not in row_key(row).casefold():
            continue
        if offset <= total < offset + limit:
            page.append({"row": number, "data": row if isinstance(row, dict) else {"value": row}})
        total += 1
    return {"version": version.number, "total": total, "offset": offset, "rows": page}


def source_row(settings: Settings, version: DatasetVersion, number: int) -> Any:
    """One source row by its number; NotFound when the version has no such row."""
    for found, row in _source_rows(settings, version):
        if found == number:
            return row
        if found > number:
            break
    raise NotFound(f"version {version.number} has no row {number}")


def rows_by_number(
    settings: Settings, version: DatasetVersion, numbers: set[int]
) -> Iterator[tuple[int, Any]]:
    """The source rows of these numbers."""
    for number, row in _source_rows(settings, version):
        if number in numbers:
            yield number, row
