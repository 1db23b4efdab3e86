"""HTTP routes of datasets: streamed upload checked row by row, list, show, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query, Request, status
from pydantic import BaseModel
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import CurrentToken, SessionDep, SettingsDep, api_router
from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.catalog.names import CatalogName
from training_platform.core.errors import NotFound
from training_platform.datasets import service
from training_platform.jobs.models import Job

router = api_router(tags=["datasets"])
FLUSH_BYTES = 1 << 20


class DatasetPublic(BaseModel):
    """A registered dataset (never its server path)."""

    id: int
    name: str
    source: str
    format: str
    task: str | None
    rows: int
    size_bytes: int
    sha256: str
    description: str
    created_at: datetime


@router.get("/datasets")
def list_datasets(session: SessionDep, _: CurrentToken) -> list[DatasetPublic]:
    """Datasets jobs can train on."""
    return [DatasetPublic(**service.describe(d)) for d in catalog.list_datasets(session=session)]


@router.post("/datasets", status_code=status.HTTP_201_CREATED)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: CurrentToken,
    name: Annotated[CatalogName, Query(description="Name jobs will use.")],
    filename: Annotated[
        str, Query(max_length=255, description="Ends in .jsonl, .json or .parquet.")
    ],
    format: Annotated[
        str | None,
        Query(
            description="messages, prompt_response, preference, prompt_answer or rl; "
            "detected from the first row when left out."
        ),
    ] = None,
    description: Annotated[str, Query(max_length=1000)] = "",
) -> DatasetPublic:
    """Upload a dataset as the raw request body; every row is checked before it is kept."""
    incoming = await run_in_threadpool(service.IncomingFile, settings, filename)
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            buffer.extend(chunk)
            if len(buffer) >= FLUSH_BYTES:
                await run_in_threadpool(incoming.write, bytes(buffer))
                buffer.clear()
        await run_in_threadpool(incoming.write, bytes(buffer))
    except BaseException:
        incoming.abort()
        raise
    sha256 = incoming.finish()

    def register() -> DatasetEntry:
        entry = service.register_upload(
            session=session,
            settings=settings,
            name=name,
            received=incoming.path,
            sha256=sha256,
            size=incoming.size,
            fmt=format,
            description=description,
        )
        session.commit()
        return entry

    entry = await run_in_threadpool(register)
    return DatasetPublic(**service.describe(entry))


def _entry(session: Session, ref: str) -> DatasetEntry:
    try:
        return catalog.resolve_dataset(session=session, ref=ref)
    except Exception:
        raise NotFound(f"dataset {ref!r} not found") from None


@router.get("/datasets/{ref}")
def get_dataset(ref: str, session: SessionDep, _: CurrentToken) -> DatasetPublic:
    """One dataset, by id or name."""
    return DatasetPublic(**service.describe(_entry(session, ref)))


@router.delete("/datasets/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(ref: str, session: SessionDep, settings: SettingsDep, _: CurrentToken) -> None:
    """Delete an uploaded dataset that no job uses."""
    entry = _entry(session, ref)
    in_use = session.exec(select(Job.id).where(Job.dataset_id == entry.id)).first() is not None
    service.delete(session=session, settings=settings, entry=entry, in_use=in_use)
    session.commit()
