"""Dedups of dataset versions and semantic search: requested over HTTP, computed by a task on
the preprocessing queue, reviewed, and written as a new version only when accepted.

Functions flush; callers commit.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.datasets import dedup, reader, versions, work
from training_platform.datasets.models import DatasetDedup, DatasetVersion
from training_platform.datasets.schemas import DedupCreate
from training_platform.datasets.vectors import (
    NEIGHBOURS_DEFAULT,
    collection_name,
    embed,
    open_store,
)

log = logging.getLogger(__name__)
PENDING, RUNNING, REVIEW, ACCEPTED, DISCARDED, FAILED = (
    "pending",
    "running",
    "review",
    "accepted",
    "discarded",
    "failed",
)
# Search builds a version's collection on request up to this many rows.
MAX_SEARCH_ROWS = 20_000


def texts_of(settings: Settings, version: DatasetVersion) -> dict[int, str]:
    """Each row's text (the strings of its task row) by row number."""
    path = catalog.managed_path(settings.home, version.path)
    found = {}
    for number, row in reader.rows(path):
        if isinstance(row, dict):
            try:
                found[number] = dedup.row_text(version.format, row, number)
            except ValueError:
                continue
    return found


def request(
    *, session: Session, entry: DatasetEntry, body: DedupCreate, actor: str
) -> DatasetDedup:
    """A pending dedup (the caller sends its task after the commit)."""
    version = versions.get(session=session, entry=entry, number=body.version or entry.version)
    unknown = sorted(set(body.stages) - set(dedup.STAGES))
    if unknown:
        raise InvalidInput(
            ("body", "stages"),
            f"unknown stage {unknown[0]!r}; the stages are {', '.join(dedup.STAGES)}",
        )
    against = None
    if body.against is not None:
        other, other_version = versions.resolve(
            session=session, ref=body.against, field=("body", "against")
        )
        if other.id == entry.id and other_version.number == version.number:
            raise InvalidInput(("body", "against"), "a version cannot be checked against itself")
        against = {"id": other.id, "name": other.name, "version": other_version.number}
    assert entry.id is not None
    created = DatasetDedup(
        dataset_id=entry.id,
        version=version.number,
        options={
            "stages": [s for s in dedup.STAGES if s in body.stages],
            "near_threshold": body.near_threshold,
            "semantic_threshold": body.semantic_threshold,
            "against": against,
        },
        created_by=actor,
    )
    session.add(created)
    session.flush()
    return created


def get(*, session: Session, entry: DatasetEntry, dedup_id: int) -> DatasetDedup:
    """One dedup of a dataset."""
    return work.get(session, DatasetDedup, entry, dedup_id)


def of_dataset(*, session: Session, entry: DatasetEntry) -> list[DatasetDedup]:
    """A dataset's dedups, newest first."""
    return work.of_dataset(session, DatasetDedup, entry)


def _searcher(settings: Settings, name: str) -> Any:
    """search(ids, vectors, query_ids, queries) on a scratch collection of the vector store."""

    def search(
        ids: Sequence[int], vectors: Any, _query_ids: Sequence[int], queries: Any
    ) -> list[list[tuple[int, float]]]:
        with open_store(settings) as store:
            store.create(name)
            try:
                store.insert(name, ids, vectors)
                return store.search(name, queries, NEIGHBOURS_DEFAULT)
            finally:
                store.drop(name)

    return search


def compute(session: Session, settings: Settings, found: DatasetDedup) -> dict[str, Any]:
    """The review of a dedup."""
    entry = session.get(DatasetEntry, found.dataset_id)
    if entry is None:
        raise NotFound("the dataset was deleted")
    texts = texts_of(settings, versions.get(session=session, entry=entry, number=found.version))
    options = found.options
    against = None
    if options.get("against"):
        other = session.get(DatasetEntry, options["against"]["id"])
        if other is None:
            raise NotFound(f"dataset {options['against']['name']!r} was deleted")
        other_version = versions.get(
            session=session, entry=other, number=options["against"]["version"]
        )
        against = texts_of(settings, other_version)
    return dedup.run(
        texts,
        stages=options["stages"],
        near_threshold=options["near_threshold"],
        semantic_threshold=options["semantic_threshold"],
        search=_searcher(settings, f"dedup_{found.id}"),
        against=against,
    )


def run(engine: Engine, settings: Settings, dedup_id: int) -> str:
    """Compute a pending dedup here (a message delivered twice computes once); its status."""

    def fill(session: Session, found: DatasetDedup) -> None:
        found.review = compute(session, settings, found)

    return work.run_once(engine, DatasetDedup, dedup_id, fill, done=REVIEW)


def accept(
    *, session: Session, settings: Settings, entry: DatasetEntry, found: DatasetDedup, note: str
) -> DatasetVersion:
    """Write the reviewed version without its dropped rows as the dataset's next version."""
    if found.status != REVIEW or found.review is None:
        raise Conflict(f"dedup {found.id} is {found.status}; only one in review can be accepted")
    if entry.version != found.version:
        raise Conflict(
            f"dataset {entry.name!r} is at version {entry.version} now, the review is of "
            f"version {found.version}; run the dedup again"
        )
    dropped = set(found.review["dropped_rows"])
    if not dropped:
        raise Conflict(f"dedup {found.id} found nothing to drop")
    source = versions.get(session=session, entry=entry, number=found.version)
    uploads = settings.datasets_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    temporary = uploads / f".{uuid.uuid4().hex}.jsonl"
    kept = 0
    with temporary.open("w", encoding="utf-8") as out:
        for number, row in reader.rows(catalog.managed_path(settings.home, source.path)):
            if number in dropped or isinstance(row, Exception):
                continue
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            kept += 1
    sha256, size = catalog.file_digest(temporary)
    stored = uploads / f"{sha256}.jsonl"
    if stored.exists():
        temporary.unlink()
    else:
        temporary.replace(stored)
    entry.path, entry.sha256, entry.size_bytes, entry.rows = (
        str(stored.relative_to(settings.home)),
        sha256,
        size,
        kept,
    )
    session.add(entry)
    version = versions.record(
        session=session,
        entry=entry,
        origin="dedup",
        parent=found.version,
        note=note,
        extra={
            "dedup": {
                "id": found.id,
                "stages": found.review["stages"],
                "dropped": len(dropped),
                "against": found.options.get("against"),
            }
        },
    )
    found.status, found.accepted_version = ACCEPTED, version.number
    session.add(found)
    session.flush()
    return version


def discard(*, session: Session, found: DatasetDedup) -> None:
    """Close a review without writing anything."""
    if found.status != REVIEW:
        raise Conflict(f"dedup {found.id} is {found.status}; only one in review can be discarded")
    found.status = DISCARDED
    session.add(found)
    session.flush()


def search(
    *,
    session: Session,
    settings: Settings,
    entry: DatasetEntry,
    version: DatasetVersion,
    query: str | None,
    row: int | None,
    limit: int,
) -> list[tuple[int, float]]:
    """The rows nearest a text or a row (the version's collection is built on first use)."""
    if (query is None) == (row is None):
        raise InvalidInput(("body",), "give exactly one of query and row")
    assert entry.id is not None
    name = collection_name(entry.id, version.number)
    texts: dict[int, str] | None = None
    if row is not None:
        texts = texts_of(settings, version)
        if row not in texts:
            raise NotFound(f"version {version.number} has no row {row}")
    with open_store(settings) as store:
        if not store.has(name):
            if version.rows > MAX_SEARCH_ROWS:
                raise InvalidInput(
                    ("body",),
                    f"version {version.number} has {version.rows} rows; search builds its index "
                    f"on request up to {MAX_SEARCH_ROWS}",
                )
            texts = texts if texts is not None else texts_of(settings, version)
            numbers = sorted(texts)
            store.create(name)
            store.insert(name, numbers, embed([texts[n] for n in numbers]))
        probe = embed([query if query is not None else texts[row]])  # type: ignore[index]
        hits = store.search(name, probe, limit + (1 if row is not None else 0))[0]
    return [(number, score) for number, score in hits if number != row][:limit]


def drop_collections(settings: Settings, dataset_id: int, numbers: list[int]) -> None:
    """Remove a deleted dataset's search collections (a failure is logged: the dataset is gone
    whatever happens, and a collection nobody names is only space)."""
    if not settings.milvus_uri and not (settings.vectors_dir / "milvus.db").exists():
        return  # nothing was ever indexed here
    try:
        with open_store(settings) as store:
            for number in numbers:
                store.drop(collection_name(dataset_id, number))
    except Exception as error:  # the store is busy or down: leave the collections
        log.warning("search collections of dataset %s not removed: %s", dataset_id, error)
