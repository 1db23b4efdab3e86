"""Analyses of dataset versions: requested over HTTP, computed by a task on the preprocessing
queue (a big file must not hold a web request), stored with the version they describe.

The same options on the same version give the same analysis back (pending, running or
done); a failed one is computed again. Functions flush; callers commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.core.errors import InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.datasets import analysis, reader, versions, work
from training_platform.datasets.models import DatasetAnalysis, DatasetVersion
from training_platform.datasets.schemas import AnalysisCreate

SUCCEEDED, FAILED = "succeeded", "failed"


def tokenizer_dir(settings: Settings, model: ModelEntry) -> Path:
    """The local directory of a model's tokenizer; InvalidInput when it is not on this machine."""
    location, is_local = catalog.model_location(settings, model)
    path = Path(location)
    if not is_local or not (path / "tokenizer_config.json").exists():
        raise InvalidInput(
            ("body", "model"),
            f"model {model.name!r} has no tokenizer on this machine (a hub id or another "
            "host's path); choose a local model",
        )
    return path


def request(
    *,
    session: Session,
    settings: Settings,
    entry: DatasetEntry,
    body: AnalysisCreate,
    actor: str,
) -> tuple[DatasetAnalysis, bool]:
    """The analysis of these options on this version: an earlier one, or a new pending one
    (created True: the caller sends its task after the commit)."""
    version = versions.get(session=session, entry=entry, number=body.version or entry.version)
    options: dict[str, Any] = {
        "model": None,
        "max_length": body.max_length,
        "label_fields": sorted(set(body.label_fields)),
        "bins": body.bins,
    }
    if body.model is not None:
        model = catalog.resolve_model(session=session, ref=body.model)
        tokenizer_dir(settings, model)
        options["model"] = {"id": model.id, "name": model.name}
    for name in options["label_fields"]:
        if not name or len(name) > 128:
            raise InvalidInput(("body", "label_fields"), f"{name!r} is not a field name")
    earlier = session.exec(
        select(DatasetAnalysis)
        .where(
            DatasetAnalysis.dataset_id == entry.id,
            DatasetAnalysis.version == version.number,
            col(DatasetAnalysis.status) != FAILED,
        )
        .order_by(col(DatasetAnalysis.id).desc())
    ).all()
    for found in earlier:
        if found.options == options:
            return found, False
    assert entry.id is not None
    created = DatasetAnalysis(
        dataset_id=entry.id, version=version.number, options=options, created_by=actor
    )
    session.add(created)
    session.flush()
    return created, True


def get(*, session: Session, entry: DatasetEntry, analysis_id: int) -> DatasetAnalysis:
    """One analysis of a dataset."""
    return work.get(session, DatasetAnalysis, entry, analysis_id)


def of_dataset(*, session: Session, entry: DatasetEntry) -> list[DatasetAnalysis]:
    """A dataset's analyses, newest first."""
    return work.of_dataset(session, DatasetAnalysis, entry)


def load_tokenizer(settings: Settings, session: Session, model_id: int) -> Any:
    """A catalog model's tokenizer, from its local directory."""
    from transformers import AutoTokenizer

    model = session.get(ModelEntry, model_id)
    if model is None:
        raise InvalidInput(("body", "model"), f"model {model_id} was deleted")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir(settings, model)))


def compute(
    settings: Settings, session: Session, version: DatasetVersion, options: dict[str, Any]
) -> dict[str, Any]:
    """The statistics of a version with the analysis options."""
    model = options.get("model")
    tokenizer = load_tokenizer(settings, session, model["id"]) if model else None
    path = catalog.managed_path(settings.home, version.path)
    return analysis.analyze(
        reader.rows(path),
        version.format,
        lengths=analysis.Lengths(tokenizer),
        max_length=options.get("max_length"),
        label_fields=options.get("label_fields", []),
        bins=int(options.get("bins", 20)),
    )


def run(engine: Engine, settings: Settings, analysis_id: int) -> str:
    """Compute a pending analysis here (a message delivered twice computes once); its status."""

    def fill(session: Session, found: DatasetAnalysis) -> None:
        entry = session.get(DatasetEntry, found.dataset_id)
        if entry is None:
            raise NotFound("the dataset was deleted")
        version = versions.get(session=session, entry=entry, number=found.version)
        found.result = compute(settings, session, version, found.options)

    return work.run_once(engine, DatasetAnalysis, analysis_id, fill, done=SUCCEEDED)
