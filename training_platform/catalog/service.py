"""Catalog service: register and resolve the models and datasets jobs name."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session, select

from training_platform.catalog.models import DatasetEntry, ModelEntry, ModelLineage
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.settings import Settings


def managed_path(home: Path, relative: str) -> Path:
    """The absolute path of a catalog entry, refusing anything that escapes TP_HOME."""
    path = (home / relative).resolve()
    if not path.is_relative_to(home.resolve()):
        raise NotFound(f"catalog path {relative!r} is outside the managed root")
    return path


def list_models(*, session: Session, projects: set[int] | None = None) -> Sequence[ModelEntry]:
    """Registered models (of `projects` unless None), by name."""
    from training_platform.projects.service import owned_by

    query = select(ModelEntry).where(owned_by(ModelEntry.project_id, projects))
    return session.exec(query.order_by(ModelEntry.name)).all()


def list_datasets(*, session: Session, projects: set[int] | None = None) -> Sequence[DatasetEntry]:
    """Registered datasets (of `projects` unless None), by name."""
    from training_platform.projects.service import owned_by

    query = select(DatasetEntry).where(owned_by(DatasetEntry.project_id, projects))
    return session.exec(query.order_by(DatasetEntry.name)).all()


def project_of_model(session: Session, ref: str | int) -> int | None:
    """The project of a model, by id or name (None: the default's, or no such model)."""
    entry = _find(session, ModelEntry, ref)
    return entry.project_id if entry is not None else None


def project_of_dataset(session: Session, ref: str | int) -> int | None:
    """The project of a dataset, by id or name (None: the default's, or no such dataset)."""
    entry = _find(session, DatasetEntry, ref)
    return entry.project_id if entry is not None else None


_Entry = TypeVar("_Entry", ModelEntry, DatasetEntry)


def _find(session: Session, table: type[_Entry], ref: str | int) -> _Entry | None:
    row = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = session.get(table, int(ref))
    if row is None and isinstance(ref, str):
        row = session.exec(select(table).where(table.name == ref)).first()
    return row


def _by_ref(session: Session, table: type[_Entry], ref: str | int, field: str) -> _Entry:
    row = _find(session, table, ref)
    if row is None:
        names = sorted(session.exec(select(table.name)).all())
        known = ", ".join(names) if names else "none registered"
        raise InvalidInput(("body", field), f"unknown {field} {ref!r}; available: {known}")
    return row


def resolve_model(*, session: Session, ref: str | int) -> ModelEntry:
    """A model by id or name; InvalidInput naming the field when unknown."""
    return _by_ref(session, ModelEntry, ref, "model")


def resolve_dataset(*, session: Session, ref: str | int) -> DatasetEntry:
    """A dataset by id or name; InvalidInput naming the field when unknown."""
    return _by_ref(session, DatasetEntry, ref, "dataset")


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def count_jsonl_rows(path: Path) -> int:
    """Rows of a JSONL file, refusing lines that are not JSON objects."""
    rows = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if not isinstance(json.loads(line), dict):
                raise ValueError(f"{path.name}: line {number} is not a JSON object")
            rows += 1
    return rows


def upsert_dataset(
    *,
    session: Session,
    home: Path,
    name: str,
    path: Path,
    fmt: str,
    description: str,
    source: str = "builtin",
) -> DatasetEntry:
    """Register (or refresh) a dataset file that already lies inside TP_HOME."""
    sha256, size = file_digest(path)
    entry = session.exec(select(DatasetEntry).where(DatasetEntry.name == name)).first()
    if entry is None:
        entry = DatasetEntry(
            name=name, source=source, path="", format=fmt, rows=0, size_bytes=0, sha256=""
        )
    entry.path = str(path.relative_to(home))
    entry.format, entry.description = fmt, description
    entry.sha256, entry.size_bytes, entry.rows = sha256, size, count_jsonl_rows(path)
    session.add(entry)
    session.flush()
    return entry


def upsert_builtin_model(
    *, session: Session, home: Path, name: str, path: Path, description: str, parameters: int | None
) -> ModelEntry:
    """Register (or refresh) a bundled model built inside TP_HOME."""
    entry = session.exec(select(ModelEntry).where(ModelEntry.name == name)).first()
    if entry is None:
        entry = ModelEntry(name=name, source="builtin", path="")
    entry.path = str(path.relative_to(home))
    entry.description, entry.parameters = description, parameters
    session.add(entry)
    session.flush()
    return entry


def model_location(settings: Settings, model: ModelEntry) -> tuple[str, bool]:
    """Where a trainer loads the model from: (local directory, True) or (hub id, False)."""
    if model.source == "hub":
        return model.path, False
    path = Path(model.path)
    if not path.is_absolute():
        return str(managed_path(settings.home, model.path)), True
    return str(_inside_roots(settings, path, ("body", "model"))), True


def _inside_roots(settings: Settings, path: Path, loc: tuple[str, ...]) -> Path:
    resolved = path.expanduser().resolve()
    roots = [settings.models_dir.resolve(), *settings.model_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InvalidInput(
            loc, f"{path} is outside the model roots ({allowed}); see TP_MODEL_ROOTS"
        )
    return resolved


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def register_model(
    *,
    session: Session,
    settings: Settings,
    name: str,
    path: str | None,
    hub_id: str | None,
    description: str,
    job_output: str | None = None,
    job_id: int | None = None,
    project_id: int | None = None,
) -> ModelEntry:
    """Register a model: a directory inside a model root, a hub id, or a job's final model.

    `job_output` is the job's model directory relative to TP_HOME (see jobs.service). The
    model belongs to `project_id`; a job's model to the job's project.
    """
    if job_id is not None:
        from training_platform.jobs.service import project_of

        project_id = project_of(session, job_id)
    if sum(x is not None for x in (path, hub_id, job_output)) != 1:
        raise InvalidInput(("body",), "give exactly one of path, hub_id or job_id")
    if session.exec(select(ModelEntry).where(ModelEntry.name == name)).first() is not None:
        raise Conflict(f"a model named {name!r} exists already")
    if job_output is not None:
        entry = ModelEntry(
            name=name, source="job", path=job_output, description=description, job_id=job_id
        )
    elif hub_id is not None:
        if not HUB_ID.match(hub_id):
            raise InvalidInput(
                ("body", "hub_id"), f"{hub_id!r} is not a Hugging Face id (owner/name)"
            )
        entry = ModelEntry(name=name, source="hub", path=hub_id, description=description)
    else:
        assert path is not None
        directory = _inside_roots(settings, Path(path), ("body", "path"))
        if not (directory / "config.json").is_file():
            raise InvalidInput(("body", "path"), f"{path} holds no model (no config.json)")
        entry = ModelEntry(name=name, source="local", path=str(directory), description=description)
    entry.project_id = project_id
    session.add(entry)
    session.flush()
    return entry


def add_parent(
    *, session: Session, model_id: int, parent_id: int, relation: str, detail: dict[str, Any]
) -> ModelLineage:
    """Record that a model came from another (a merge's input, a soup's checkpoint)."""
    row = ModelLineage(model_id=model_id, parent_id=parent_id, relation=relation, detail=detail)
    session.add(row)
    session.flush()
    return row
