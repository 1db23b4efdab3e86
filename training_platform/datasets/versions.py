"""Dataset versions: every content a dataset name had, a manifest each, and what pins them.

A name points to its newest version; a reference `name@N` (or `id@N`) names version N. Jobs
and evaluations record the number they were submitted on, so a later upload under the same
name never changes what an earlier submission trains or evaluates on.
Functions flush; callers commit.
"""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session, col, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import InvalidInput, NotFound
from training_platform.core.types import utcnow
from training_platform.datasets.models import DatasetVersion

_PINNED = re.compile(r"^(?P<base>[^@]+)@v?(?P<number>[0-9]{1,9})$")


def split_ref(ref: str | int) -> tuple[str | int, int | None]:
    """(dataset reference, version number or None) of `name`, `id`, `name@N` or `name@vN`."""
    if isinstance(ref, str):
        found = _PINNED.match(ref)
        if found:
            return found["base"], int(found["number"])
    return ref, None


def resolve(
    *, session: Session, ref: str | int, field: tuple[str, ...] = ("body", "dataset")
) -> tuple[DatasetEntry, DatasetVersion]:
    """The dataset and the version a reference names (its newest when no @N is given)."""
    base, number = split_ref(ref)
    entry = catalog.resolve_dataset(session=session, ref=base)
    version = find(session=session, entry=entry, number=number or entry.version)
    if version is None:
        raise InvalidInput(
            field,
            f"dataset {entry.name!r} has no version {number}; its versions are 1-{entry.version}",
        )
    return entry, version


def find(*, session: Session, entry: DatasetEntry, number: int) -> DatasetVersion | None:
    """One version of a dataset, or None."""
    return session.exec(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == entry.id, DatasetVersion.number == number
        )
    ).first()


def get(*, session: Session, entry: DatasetEntry, number: int) -> DatasetVersion:
    """One version of a dataset; NotFound when it has none of that number."""
    version = find(session=session, entry=entry, number=number)
    if version is None:
        raise NotFound(f"dataset {entry.name!r} has no version {number}")
    return version


def of_dataset(*, session: Session, entry: DatasetEntry) -> list[DatasetVersion]:
    """Every version of a dataset, newest first."""
    return list(
        session.exec(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == entry.id)
            .order_by(col(DatasetVersion.number).desc())
        ).all()
    )


def pinned(*, session: Session, entry: DatasetEntry, number: int | None) -> DatasetVersion:
    """The version a job or an evaluation recorded (jobs from before versions: the newest)."""
    version = find(session=session, entry=entry, number=number or entry.version)
    if version is None:
        raise NotFound(f"version {number} of dataset {entry.name!r} is gone")
    return version


def record(
    *,
    session: Session,
    entry: DatasetEntry,
    origin: str,
    parent: int | None = None,
    detected_by: str = "",
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> DatasetVersion:
    """Record the entry's current file as its next version and point the name at it."""
    assert entry.id is not None
    newest = session.exec(
        select(DatasetVersion.number)
        .where(DatasetVersion.dataset_id == entry.id)
        .order_by(col(DatasetVersion.number).desc())
    ).first()
    number = (newest or 0) + 1
    created = utcnow()
    manifest: dict[str, Any] = {
        "dataset": entry.name,
        "version": number,
        "format": entry.format,
        "file": {
            "path": entry.path,
            "sha256": entry.sha256,
            "size_bytes": entry.size_bytes,
            "rows": entry.rows,
        },
        "origin": origin,
        "parent": parent,
        "detected_by": detected_by,
        "note": note,
        "created_at": created.isoformat(),
    } | (extra or {})
    version = DatasetVersion(
        dataset_id=entry.id,
        number=number,
        path=entry.path,
        format=entry.format,
        rows=entry.rows,
        size_bytes=entry.size_bytes,
        sha256=entry.sha256,
        origin=origin,
        parent=parent,
        manifest=manifest,
        created_at=created,
    )
    entry.version = number
    session.add(version)
    session.add(entry)
    session.flush()
    return version


def ensure_current(*, session: Session, entry: DatasetEntry, origin: str) -> DatasetVersion:
    """A version for the entry's current file: the newest when it holds it, else a new one."""
    newest = find(session=session, entry=entry, number=entry.version)
    if newest is not None and newest.sha256 == entry.sha256 and newest.path == entry.path:
        return newest
    return record(
        session=session,
        entry=entry,
        origin=origin,
        parent=newest.number if newest is not None else None,
    )


def describe(version: DatasetVersion) -> dict[str, Any]:
    """Public fields of a version (the manifest names only paths inside TP_HOME's datasets)."""
    return {
        "number": version.number,
        "format": version.format,
        "rows": version.rows,
        "size_bytes": version.size_bytes,
        "sha256": version.sha256,
        "origin": version.origin,
        "parent": version.parent,
        "manifest": {k: v for k, v in version.manifest.items() if k != "file"}
        | {"file": {k: v for k, v in version.manifest.get("file", {}).items() if k != "path"}},
        "created_at": version.created_at,
    }
