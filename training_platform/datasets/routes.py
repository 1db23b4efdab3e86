"""HTTP routes of datasets: streamed upload checked row by row (a preview too), versions,
diffs, rows, list, show, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Query, Request, Response, status
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import (
    CurrentToken,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry
from training_platform.catalog.names import CatalogName
from training_platform.core.errors import InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.core.types import DB_INT_MAX
from training_platform.datasets import (
    analyses,
    analysis,
    dedups,
    formats,
    service,
    versions,
    work,
)
from training_platform.datasets.schemas import (
    AnalysisCreate,
    AnalysisPublic,
    DatasetDiff,
    DatasetPreview,
    DatasetPublic,
    DatasetUploaded,
    DatasetVersionPublic,
    DedupCreate,
    DedupPublic,
    RenderedSample,
    RowProblem,
    RowsPage,
    SearchHit,
    SearchRequest,
    SearchResult,
)
from training_platform.jobs.models import Job
from training_platform.projects.service import project_for_submit, visible_project_ids

router = api_router(
    tags=["datasets"],
    scoped=project_scoped("ref", "dataset", catalog.project_of_dataset, by_id=False),
)
Id = Annotated[int, PathParam(ge=1, le=DB_INT_MAX)]
Newest = Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="Default: the newest.")]
FLUSH_BYTES = 1 << 20


@router.get("/datasets")
def list_datasets(session: SessionDep, token: CurrentToken) -> list[DatasetPublic]:
    """Datasets jobs can train on: the caller's projects' (an admin: all)."""
    projects = visible_project_ids(session=session, caller=token)
    found = catalog.list_datasets(session=session, projects=projects)
    return [DatasetPublic(**service.describe(d)) for d in found]


FORMAT_HELP = f"{', '.join(formats.SOURCE_FORMATS)}; detected from the first row when left out."


async def _receive(request: Request, settings: Settings, filename: str) -> service.IncomingFile:
    """The request body streamed into an incoming file (removed again on any failure)."""
    incoming = await run_in_threadpool(service.IncomingFile, settings, filename)
    buffer = bytearray()
    try:
        stream: AsyncIterator[bytes] = request.stream()
        async for chunk in stream:
            buffer.extend(chunk)
            if len(buffer) >= FLUSH_BYTES:
                await run_in_threadpool(incoming.write, bytes(buffer))
                buffer.clear()
        await run_in_threadpool(incoming.write, bytes(buffer))
    except BaseException:
        incoming.abort()
        raise
    return incoming


@router.post("/datasets", status_code=status.HTTP_201_CREATED)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    name: Annotated[CatalogName, Query(description="Name jobs will use.")],
    filename: Annotated[
        str, Query(max_length=255, description="Ends in .jsonl, .json or .parquet.")
    ],
    format: Annotated[str | None, Query(description=FORMAT_HELP)] = None,
    description: Annotated[str, Query(max_length=1000)] = "",
    new_version: Annotated[
        bool, Query(description="Add the file as the next version of an existing dataset.")
    ] = False,
    project: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=63,
            description="The project a new dataset belongs to (default: the default project).",
        ),
    ] = None,
) -> DatasetUploaded:
    """Upload a dataset as the raw request body; every row is checked before it is kept."""
    owner = await run_in_threadpool(project_for_submit, session=session, caller=token, name=project)
    visible = await run_in_threadpool(visible_project_ids, session=session, caller=token)
    incoming = await _receive(request, settings, filename)
    sha256 = incoming.finish()

    def register() -> DatasetUploaded:
        entry = service.register_upload(
            session=session,
            settings=settings,
            name=name,
            received=incoming.path,
            sha256=sha256,
            size=incoming.size,
            fmt=format,
            description=description,
            new_version=new_version,
            project_id=owner.id,
            visible=visible,
        )
        newest = versions.get(session=session, entry=entry, number=entry.version)
        session.commit()
        return DatasetUploaded(
            **service.describe(entry), detected_by=newest.manifest.get("detected_by", "")
        )

    return await run_in_threadpool(register)


@router.post("/datasets/preview")
async def preview_dataset(
    request: Request,
    settings: SettingsDep,
    _: CurrentToken,
    filename: Annotated[
        str, Query(max_length=255, description="Ends in .jsonl, .json or .parquet.")
    ],
    format: Annotated[str | None, Query(description=FORMAT_HELP)] = None,
) -> DatasetPreview:
    """What uploading this body would register: the format and the rule that chose it, the
    first rows normalised, and the rows that do not fit. Nothing is kept."""
    incoming = await _receive(request, settings, filename)
    incoming.finish()

    def look(path: Path) -> DatasetPreview:
        try:
            found = service.inspect(path, format)
        finally:
            path.unlink(missing_ok=True)
        assert found.format is not None
        return DatasetPreview(
            format=found.format,
            detected_by=found.rule,
            task=formats.TASK_OF_FORMAT[found.format],
            rows=found.rows,
            bad_rows=found.bad_rows,
            errors=[RowProblem(row=n, message=m) for n, m in found.errors],
            preview=found.preview,
        )

    return await run_in_threadpool(look, incoming.path)


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
    assert entry.id is not None
    dataset_id, numbers = (
        entry.id,
        [v.number for v in versions.of_dataset(session=session, entry=entry)],
    )
    service.delete(session=session, settings=settings, entry=entry, in_use=in_use)
    session.commit()
    dedups.drop_collections(settings, dataset_id, numbers)


@router.get("/datasets/{ref}/versions")
def list_versions(ref: str, session: SessionDep, _: CurrentToken) -> list[DatasetVersionPublic]:
    """Every version of a dataset, newest first."""
    entry = _entry(session, ref)
    return [
        DatasetVersionPublic(**versions.describe(v))
        for v in versions.of_dataset(session=session, entry=entry)
    ]


@router.get("/datasets/{ref}/versions/{number}")
def get_version(ref: str, number: Id, session: SessionDep, _: CurrentToken) -> DatasetVersionPublic:
    """One version and its manifest."""
    entry = _entry(session, ref)
    return DatasetVersionPublic(
        **versions.describe(versions.get(session=session, entry=entry, number=number))
    )


@router.get("/datasets/{ref}/diff")
def diff_versions(
    ref: str,
    session: SessionDep,
    settings: SettingsDep,
    _: CurrentToken,
    base: Annotated[int, Query(ge=1, le=DB_INT_MAX, description="The older version.")],
    other: Annotated[
        int | None, Query(ge=1, le=DB_INT_MAX, description="Default: the newest.")
    ] = None,
) -> DatasetDiff:
    """Rows added and removed between two versions (rows compare by their content)."""
    entry = _entry(session, ref)
    first = versions.get(session=session, entry=entry, number=base)
    second = versions.get(session=session, entry=entry, number=other or entry.version)
    return DatasetDiff(**service.diff(settings, first, second))


@router.get("/datasets/{ref}/rows")
def list_rows(
    ref: str,
    session: SessionDep,
    settings: SettingsDep,
    _: CurrentToken,
    version: Annotated[
        int | None, Query(ge=1, le=DB_INT_MAX, description="Default: the newest.")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    q: Annotated[str, Query(max_length=200, description="Rows whose text contains this.")] = "",
) -> RowsPage:
    """Page through a version's rows as uploaded, or search them for a text."""
    entry = _entry(session, ref)
    chosen = versions.get(session=session, entry=entry, number=version or entry.version)
    return RowsPage(**service.rows_page(settings, chosen, offset=offset, limit=limit, query=q))


@router.post("/datasets/{ref}/analyses", status_code=status.HTTP_202_ACCEPTED)
def analyze_dataset(
    ref: str,
    body: AnalysisCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
) -> AnalysisPublic:
    """Compute a version's statistics on the preprocessing queue; the same options on the same
    version answer 200 with the analysis there is."""
    entry = _entry(session, ref)
    found, created = analyses.request(
        session=session, settings=settings, entry=entry, body=body, actor=token.actor
    )
    session.commit()
    if created:
        from training_platform.datasets.tasks import send_analysis

        assert found.id is not None
        send_analysis(found.id)
    else:
        response.status_code = status.HTTP_200_OK
    return AnalysisPublic(**work.describe(found, entry))


@router.get("/datasets/{ref}/analyses")
def list_analyses(ref: str, session: SessionDep, _: CurrentToken) -> list[AnalysisPublic]:
    """A dataset's analyses, newest first."""
    entry = _entry(session, ref)
    return [
        AnalysisPublic(**work.describe(a, entry))
        for a in analyses.of_dataset(session=session, entry=entry)
    ]


@router.get("/datasets/{ref}/analyses/{analysis_id}")
def get_analysis(ref: str, analysis_id: Id, session: SessionDep, _: CurrentToken) -> AnalysisPublic:
    """One analysis and, once it succeeded, its statistics."""
    entry = _entry(session, ref)
    found = analyses.get(session=session, entry=entry, analysis_id=analysis_id)
    return AnalysisPublic(**work.describe(found, entry))


@router.get("/datasets/{ref}/rows/{row}/render")
def render_row(
    ref: str,
    row: Id,
    session: SessionDep,
    settings: SettingsDep,
    _: CurrentToken,
    model: Annotated[str, Query(max_length=200, description="Whose chat template renders it.")],
    version: Annotated[
        int | None, Query(ge=1, le=DB_INT_MAX, description="Default: the newest.")
    ] = None,
    assistant_only_loss: Annotated[
        bool, Query(description="The SFT setting (both backends' default: true).")
    ] = True,
    max_length: Annotated[int | None, Query(ge=1, le=1_048_576)] = None,
) -> RenderedSample:
    """One row as the trainer sees it: the chat template's text, the tokens that count toward
    the loss marked, and those max_length cuts off."""
    entry = _entry(session, ref)
    chosen = versions.get(session=session, entry=entry, number=version or entry.version)
    found = catalog.resolve_model(session=session, ref=model)
    assert found.id is not None
    source = service.source_row(settings, chosen, row)
    tokenizer = analyses.load_tokenizer(settings, session, found.id)
    try:
        rendered = analysis.render(
            source,
            chosen.format,
            row,
            tokenizer=tokenizer,
            assistant_only=assistant_only_loss,
            max_length=max_length,
        )
    except ValueError as error:
        raise InvalidInput(("query", "assistant_only_loss"), str(error)) from None
    return RenderedSample(**rendered)


@router.post("/datasets/{ref}/dedups", status_code=status.HTTP_202_ACCEPTED)
def dedup_dataset(
    ref: str, body: DedupCreate, session: SessionDep, token: CurrentToken
) -> DedupPublic:
    """Find exact, near and semantic duplicates of a version (or the rows that match another
    dataset) on the preprocessing queue; nothing is written until the review is accepted."""
    entry = _entry(session, ref)
    found = dedups.request(session=session, entry=entry, body=body, actor=token.actor)
    session.commit()
    from training_platform.datasets.tasks import send_dedup

    assert found.id is not None
    send_dedup(found.id)
    return DedupPublic(**work.describe(found, entry))


@router.get("/datasets/{ref}/dedups")
def list_dedups(ref: str, session: SessionDep, _: CurrentToken) -> list[DedupPublic]:
    """A dataset's dedups, newest first."""
    entry = _entry(session, ref)
    return [
        DedupPublic(**work.describe(d, entry))
        for d in dedups.of_dataset(session=session, entry=entry)
    ]


@router.get("/datasets/{ref}/dedups/{dedup_id}")
def get_dedup(ref: str, dedup_id: Id, session: SessionDep, _: CurrentToken) -> DedupPublic:
    """One dedup and, once computed, its review: clusters with the kept and dropped rows."""
    entry = _entry(session, ref)
    return DedupPublic(
        **work.describe(dedups.get(session=session, entry=entry, dedup_id=dedup_id), entry)
    )


@router.post("/datasets/{ref}/dedups/{dedup_id}/accept", status_code=status.HTTP_201_CREATED)
def accept_dedup(
    ref: str,
    dedup_id: Id,
    session: SessionDep,
    settings: SettingsDep,
    _: CurrentToken,
    note: Annotated[str, Query(max_length=1000)] = "",
) -> DatasetVersionPublic:
    """Write the reviewed version without the dropped rows as the dataset's next version."""
    entry = _entry(session, ref)
    found = dedups.get(session=session, entry=entry, dedup_id=dedup_id)
    version = dedups.accept(session=session, settings=settings, entry=entry, found=found, note=note)
    session.commit()
    return DatasetVersionPublic(**versions.describe(version))


@router.post("/datasets/{ref}/dedups/{dedup_id}/discard")
def discard_dedup(ref: str, dedup_id: Id, session: SessionDep, _: CurrentToken) -> DedupPublic:
    """Close a review without writing anything."""
    entry = _entry(session, ref)
    found = dedups.get(session=session, entry=entry, dedup_id=dedup_id)
    dedups.discard(session=session, found=found)
    session.commit()
    return DedupPublic(**work.describe(found, entry))


@router.post("/datasets/{ref}/search")
def search_dataset(
    ref: str, body: SearchRequest, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> SearchResult:
    """Rows like a text or like a row, by the cosine similarity of their MiniLM embeddings in
    the vector store, answered by a worker (a version's collection is built on its first
    search)."""
    from training_platform.datasets.tasks import ask_search

    if (body.query is None) == (body.row is None):
        raise InvalidInput(("body",), "give exactly one of query and row")
    entry = _entry(session, ref)
    chosen = versions.get(session=session, entry=entry, number=body.version or entry.version)
    assert entry.id is not None
    hits = ask_search(
        settings,
        dataset_id=entry.id,
        version=chosen.number,
        query=body.query,
        row=body.row,
        limit=body.limit,
    )
    rows = {n: r for n, r in service.rows_by_number(settings, chosen, {n for n, _ in hits})}
    return SearchResult(
        version=chosen.number,
        hits=[SearchHit(row=n, score=round(score, 4), data=rows[n]) for n, score in hits],
    )
