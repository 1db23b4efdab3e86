"""Model surgery: merge catalog models with mergekit, average a job's checkpoints into a soup,
select a job's best checkpoint by a declared rule, and trace a model's lineage.

A merge is checked whole before anything is stored: every model resolves to a local catalog
directory (a LoRA adapter to its base as well), the method's rules hold, and the models fit
together (architecture, sizes, vocabulary and tokenizer). It then runs as an ordinary job
(builtin/merge) on the jobs queue: scheduled, watched, cancelled and logged like every other.
When that job has ended, `collect` (the surgery pass of the maintenance tick) registers its
model in the catalog with a lineage row per parent, in one transaction that a compare-and-set
on the merge's status guards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlmodel import Session, col, select

from training_platform.backends.builtin.merge import (
    OUT_SHARD_BYTES,
    RULES,
    MergeJobInput,
    MergeJobParameters,
    method_errors,
)
from training_platform.catalog import service as catalog
from training_platform.catalog.models import ModelEntry, ModelLineage
from training_platform.core.errors import Conflict, DomainError, InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.datasets import formats
from training_platform.datasets import versions as dataset_versions
from training_platform.evaluation import scoring
from training_platform.evaluation import service as evaluations
from training_platform.evaluation.models import Evaluation
from training_platform.evaluation.schemas import EvaluationCreate
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job, JobMetric
from training_platform.jobs.schemas import JobCreate, JobPolicy
from training_platform.jobs.state import TERMINAL, JobStatus
from training_platform.surgery.models import GreedySoup, Merge, Sweep
from training_platform.surgery.schemas import (
    MAX_SWEEP_CANDIDATES,
    MAX_SWEEP_VALUES,
    Candidate,
    Estimate,
    GreedySoupCreate,
    InputPublic,
    LeaderboardRow,
    LineageEdge,
    LineageNode,
    MergeCreate,
    MergeInput,
    MergePreview,
    ModelLineagePublic,
    ModelRef,
    SelectCreate,
    SelectionPublic,
    SoupCreate,
    SweepCreate,
)

log = logging.getLogger(__name__)

PENDING, SUCCEEDED, FAILED, CANCELLED = "pending", "succeeded", "failed", "cancelled"
# What two models must share to be merged tensor by tensor (config.json keys).
SHAPE_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2}
# The merge program's own memory: Python, torch, transformers and mergekit imported.
RUNTIME_BYTES = 1 << 30
READ_BYTES_PER_S = 200e6  # disk and merge math together, for the time class only


# --- resolving inputs ------------------------------------------------------------------------


@dataclass
class Resolved:
    """A merge input: its catalog entry and directory; an adapter's base too."""

    entry: ModelEntry
    directory: Path
    loc: tuple[str | int, ...]
    config: dict[str, Any]  # config.json (an adapter's: its base's)
    adapter_base: ModelEntry | None = None
    base_directory: Path | None = None

    @property
    def model_id(self) -> int:
        assert self.entry.id is not None
        return self.entry.id

    def weights_dir(self) -> Path:
        """Where the full weights are (an adapter's base)."""
        return self.base_directory or self.directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _relocated(error: InvalidInput, loc: tuple[str | int, ...]) -> InvalidInput:
    return InvalidInput(("body", *loc), error.message)


def _entry_of(
    session: Session, settings: Settings, ref: ModelRef, loc: tuple[str | int, ...]
) -> ModelEntry:
    try:
        if ref.job is not None:
            return evaluations.job_model(session, settings, ref.job)
        if ref.checkpoint is not None:
            return evaluations.job_model(session, settings, ref.checkpoint.job, ref.checkpoint.step)
        assert ref.model is not None
        return catalog.resolve_model(session=session, ref=ref.model)
    except InvalidInput as error:
        field = "job" if ref.job is not None else "checkpoint" if ref.checkpoint else "model"
        raise _relocated(error, (*loc, field)) from None


def is_adapter(directory: Path) -> bool:
    """A PEFT adapter without full weights."""
    return (directory / "adapter_config.json").is_file() and not (
        directory / "config.json"
    ).is_file()


def _local_dir(settings: Settings, entry: ModelEntry, loc: tuple[str | int, ...]) -> Path:
    location, is_local = catalog.model_location(settings, entry)
    if not is_local:
        raise InvalidInput(
            ("body", *loc),
            f"model {entry.name!r} is a hub id: register a local copy by path to merge it",
        )
    directory = Path(location)
    if not directory.is_dir():
        raise InvalidInput(("body", *loc), f"model {entry.name!r}: its files are gone")
    return directory


def resolve(
    session: Session, settings: Settings, ref: ModelRef, loc: tuple[str | int, ...]
) -> Resolved:
    """A merge input by catalog name, job or checkpoint; InvalidInput at `loc` otherwise."""
    entry = _entry_of(session, settings, ref, loc)
    directory = _local_dir(settings, entry, loc)
    if not is_adapter(directory):
        if not (directory / "config.json").is_file():
            raise InvalidInput(("body", *loc), f"model {entry.name!r} holds no config.json")
        return Resolved(entry, directory, loc, _read_json(directory / "config.json"))
    # A LoRA adapter: its base is the model the job that trained it started from.
    job = session.get(Job, entry.job_id) if entry.job_id is not None else None
    base = session.get(ModelEntry, job.model_id) if job and job.model_id is not None else None
    if base is None:
        raise InvalidInput(
            ("body", *loc),
            f"model {entry.name!r} is a LoRA adapter whose base model is not in the catalog",
        )
    base_dir = _local_dir(settings, base, loc)
    if is_adapter(base_dir):
        raise InvalidInput(
            ("body", *loc), f"model {entry.name!r} is an adapter of an adapter ({base.name!r})"
        )
    return Resolved(entry, directory, loc, _read_json(base_dir / "config.json"), base, base_dir)


# --- fitting together ------------------------------------------------------------------------


def _tokenizer_digest(directory: Path) -> str | None:
    """What identifies a tokenizer's vocabulary: its tokens and ids, special ones included."""
    data = _read_json(directory / "tokenizer.json")
    if data:
        model = data.get("model") or {}
        vocabulary = {
            "vocab": model.get("vocab"),
            "merges": model.get("merges"),
            "added": [(t.get("id"), t.get("content")) for t in data.get("added_tokens") or []],
        }
        encoded = json.dumps(vocabulary, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()
    for name in ("tokenizer.model", "vocab.json"):
        path = directory / name
        if path.is_file():
            return catalog.file_digest(path)[0]
    return None


def _chat_template(directory: Path) -> str | None:
    template = directory / "chat_template.jinja"
    if template.is_file():
        return template.read_text(encoding="utf-8")
    value = _read_json(directory / "tokenizer_config.json").get("chat_template")
    return value if isinstance(value, str) else None


def _tokenizer_dir(item: Resolved) -> Path:
    if item.base_directory is not None and not (item.directory / "tokenizer_config.json").is_file():
        return item.base_directory
    return item.directory


def check_fit(items: Sequence[Resolved], tokenizer: str) -> list[str]:
    """InvalidInput naming both models and the field where two do not fit together; the list
    of what was compared otherwise. The first item is the reference (the base)."""
    reference = items[0]
    checked = [*SHAPE_FIELDS]
    if tokenizer == "base":
        checked += ["vocab_size", "tokenizer", "chat_template"]

    def refuse(other: Resolved, field: str, mine: object, theirs: object) -> InvalidInput:
        return InvalidInput(
            ("body", *other.loc),
            f"models {reference.entry.name!r} and {other.entry.name!r} do not fit together: "
            f"{field} is {mine!r} and {theirs!r}",
        )

    for other in items[1:]:
        for field in SHAPE_FIELDS:
            mine, theirs = reference.config.get(field), other.config.get(field)
            if mine != theirs:
                raise refuse(other, field, mine, theirs)
        if tokenizer != "base":
            continue
        mine, theirs = reference.config.get("vocab_size"), other.config.get("vocab_size")
        if mine != theirs:
            raise refuse(other, "vocab_size", mine, theirs)
        ours, their = (
            _tokenizer_digest(_tokenizer_dir(reference)),
            _tokenizer_digest(_tokenizer_dir(other)),
        )
        if ours != their:
            raise InvalidInput(
                ("body", *other.loc),
                f"models {reference.entry.name!r} and {other.entry.name!r} do not fit together: "
                "their tokenizers differ (tokenizer: union merges models with different "
                "vocabularies)",
            )
        mine_t, theirs_t = (
            _chat_template(_tokenizer_dir(reference)),
            _chat_template(_tokenizer_dir(other)),
        )
        if mine_t and theirs_t and mine_t != theirs_t:
            raise InvalidInput(
                ("body", *other.loc),
                f"models {reference.entry.name!r} and {other.entry.name!r} do not fit together: "
                "their chat_template differs (the merged model keeps the base's)",
            )
    return checked


# --- resource estimate -----------------------------------------------------------------------


def _tensor_sizes(directory: Path) -> tuple[int, int, int]:
    """(elements, bytes, largest tensor's bytes) of the weights in a directory: from the
    safetensors headers, or the file sizes of pickled weights."""
    elements = total = largest = 0
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(info["shape"])
            size = count * DTYPE_BYTES.get(info["dtype"], 4)
            elements, total, largest = elements + count, total + size, max(largest, size)
    if total == 0:
        for path in sorted(directory.glob("*.bin")):
            size = path.stat().st_size
            total, largest, elements = total + size, max(largest, size), elements + size // 4
    return elements, total, largest


def estimate(items: Sequence[Resolved], dtype: str | None) -> Estimate:
    """Disk, memory and time a merge of these models will need."""
    reference = items[0]
    parameters, _, _ = _tensor_sizes(reference.weights_dir())
    input_bytes = largest = 0
    adapters = 0
    for item in items:
        _, size, biggest = _tensor_sizes(item.weights_dir())
        input_bytes += size
        largest = max(largest, biggest)
        if item.base_directory is not None:
            adapters += size  # merged into its base on disk before the merge reads it
    out_dtype = dtype or str(
        reference.config.get("dtype") or reference.config.get("torch_dtype") or "float32"
    )
    output_bytes = parameters * DTYPE_BYTES.get(out_dtype, 4)
    # Lazy loading keeps a tensor of each input, its float32 copy for the math and the
    # result, plus the output shard being filled.
    working = largest * 2 * (len(items) + 2)
    ram = RUNTIME_BYTES + min(output_bytes, OUT_SHARD_BYTES) + working
    seconds = (input_bytes + output_bytes + adapters) / READ_BYTES_PER_S
    time_class = "seconds" if seconds < 60 else "minutes" if seconds < 3600 else "hours"
    return Estimate(
        parameters=parameters,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        disk_bytes=output_bytes + adapters,
        ram_bytes=ram,
        largest_tensor_bytes=largest,
        time_class=time_class,
    )


# --- merges ----------------------------------------------------------------------------------


@dataclass
class Checked:
    base: Resolved | None
    inputs: list[Resolved]
    estimate: Estimate
    checked: list[str]


def _per_model(item: MergeInput) -> dict[str, Any]:
    return {k: getattr(item, k) for k in ("weight", "density", "gamma", "epsilon")}


def check(session: Session, settings: Settings, request: MergeCreate) -> Checked:
    """Every check of a merge request, in order: the method's rules, the models, their fit."""
    errors = method_errors(
        request.method,
        request.base is not None,
        [_per_model(m) for m in request.models],
        request.parameters.given(),
    )
    if errors:
        loc, message = errors[0]
        raise InvalidInput(("body", *loc), message)
    base = resolve(session, settings, request.base, ("base",)) if request.base else None
    inputs = [
        resolve(session, settings, item, ("models", index))
        for index, item in enumerate(request.models)
    ]
    everything = [*([base] if base else []), *inputs]
    seen: dict[int, tuple[str | int, ...]] = {}
    for item in everything:
        if item.model_id in seen:
            raise InvalidInput(
                ("body", *item.loc), f"model {item.entry.name!r} is named twice in this merge"
            )
        seen[item.model_id] = item.loc
    checked = check_fit(everything, request.tokenizer)
    return Checked(base, inputs, estimate(everything, request.dtype), checked)


def _public_inputs(checked: Checked, request: MergeCreate) -> list[InputPublic]:
    rows: list[InputPublic] = []
    if checked.base is not None:
        rows.append(_input_row(checked.base, "base", {}))
    for item, asked in zip(checked.inputs, request.models, strict=True):
        rows.append(_input_row(item, "input", _per_model(asked)))
    return rows


def _input_row(item: Resolved, role: str, values: dict[str, Any]) -> InputPublic:
    return InputPublic(
        model_id=item.model_id,
        name=item.entry.name,
        role=role,
        adapter_of=item.adapter_base.name if item.adapter_base else None,
        **values,
    )


def preview(*, session: Session, settings: Settings, request: MergeCreate) -> MergePreview:
    """A merge request checked, without storing it (the caller rolls back what resolving
    registered: a job's model, a checkpoint)."""
    checked = check(session, settings, request)
    return MergePreview(
        inputs=_public_inputs(checked, request), estimate=checked.estimate, checked=checked.checked
    )


def _name_free(session: Session, name: str) -> None:
    if session.exec(select(ModelEntry).where(ModelEntry.name == name)).first() is not None:
        raise Conflict(f"a model named {name!r} exists already")
    pending = session.exec(select(Merge).where(Merge.name == name, Merge.status == PENDING)).first()
    if pending is not None:
        raise Conflict(f"merge {pending.id} will register a model named {name!r}")


def _job_input(item: Resolved, values: dict[str, Any]) -> MergeJobInput:
    return MergeJobInput(
        model_id=item.model_id,
        adapter_base_id=item.adapter_base.id if item.adapter_base else None,
        **values,
    )


def create(
    *,
    session: Session,
    settings: Settings,
    request: MergeCreate,
    actor: str,
    kind: str = "merge",
    job_name: str | None = None,
    policy: JobPolicy | None = None,
    idempotency_key: str | None = None,
    project_id: int | None = None,
    user_id: int | None = None,
) -> tuple[Merge, Job]:
    """Store the merge and its queued job (of `project_id`: the merge's project is its job's);
    nothing is written when it is refused. With an idempotency key (a pipeline stage's), a
    replay returns the merge the first call made."""
    if idempotency_key is not None:
        earlier_job = session.exec(
            select(Job).where(Job.idempotency_key == idempotency_key)
        ).first()
        if earlier_job is not None:
            earlier = session.exec(select(Merge).where(Merge.job_id == earlier_job.id)).first()
            if earlier is not None:
                return earlier, earlier_job
    checked = check(session, settings, request)
    from training_platform.projects.service import check_usable

    for item in [*([checked.base] if checked.base else []), *checked.inputs]:
        check_usable(
            session=session, project_id=project_id, field=item.loc, kind="model", entry=item.entry
        )
    _name_free(session, request.name)
    rows = _public_inputs(checked, request)
    parents = [row.model_dump(exclude_none=True, exclude={"model_id"}) for row in rows]
    parameters = MergeJobParameters(
        method=request.method,
        base=_job_input(checked.base, {}) if checked.base else None,
        models=[
            _job_input(item, _per_model(asked))
            for item, asked in zip(checked.inputs, request.models, strict=True)
        ],
        parameters=request.parameters,
        dtype=request.dtype,
        tokenizer=request.tokenizer,
        seed=request.seed,
        card={"name": request.name, "parents": parents},
    )
    first = checked.base or checked.inputs[0]
    job_request = JobCreate(
        name=job_name or f"{kind} {request.name}"[:200],
        backend="builtin",
        algorithm="merge",
        model=first.model_id,
        dataset=None,
        hyperparameters=parameters.model_dump(mode="json", by_alias=True, exclude_none=True),
        resources=request.resources,
        priority=request.priority,
        **({"policy": policy} if policy is not None else {}),
    )
    job, _ = jobs.submit(
        session=session,
        request=job_request,
        actor=actor,
        idempotency_key=idempotency_key,
        project_id=project_id,
        user_id=user_id,
    )
    merge = Merge(
        name=request.name,
        kind=kind,
        method=request.method,
        inputs=[row.model_dump(exclude_none=True) for row in rows],
        parameters=request.parameters.given(),
        dtype=request.dtype,
        tokenizer=request.tokenizer,
        estimate=checked.estimate.model_dump(),
        description=request.description,
        job_id=job.id,
        status=PENDING,
        created_by=actor,
    )
    session.add(merge)
    session.flush()
    return merge, job


def get(*, session: Session, merge_id: int) -> Merge:
    """A merge, or NotFound."""
    merge = session.get(Merge, merge_id)
    if merge is None:
        raise NotFound(f"merge {merge_id} not found")
    return merge


def list_merges(
    *, session: Session, limit: int = 100, offset: int = 0, projects: set[int] | None = None
) -> Sequence[Merge]:
    """Merges and soups, newest first; of `projects` (their jobs' projects) unless None."""
    from training_platform.projects.service import owned_by

    query = select(Merge)
    if projects is not None:
        query = query.join(Job, col(Job.id) == col(Merge.job_id)).where(
            owned_by(Job.project_id, projects)
        )
    return session.exec(query.order_by(col(Merge.id).desc()).offset(offset).limit(limit)).all()


def of_job(*, session: Session, job_id: int) -> Merge | None:
    """The merge a job runs, if it runs one."""
    return session.exec(select(Merge).where(Merge.job_id == job_id)).first()


def _settle(session: Session, merge: Merge, status: str, values: dict[str, Any]) -> bool:
    moved = session.execute(
        update(Merge)
        .where(col(Merge.id) == merge.id, col(Merge.status) == PENDING)
        .values(status=status, finished_at=utcnow(), **values)
    )
    return bool(getattr(moved, "rowcount", 0))


def collect(session: Session, settings: Settings, merge: Merge, job: Job) -> bool:
    """Settle a merge whose job has ended: register its model with its lineage when the job
    succeeded. True when this call settled it (a compare-and-set: two passes never both do)."""
    if job.status != JobStatus.SUCCEEDED.value:
        status = CANCELLED if job.status == JobStatus.CANCELLED.value else FAILED
        done = _settle(session, merge, status, {"error": job.error or f"its job {job.status}"})
        session.commit()
        return done
    try:
        path = jobs.final_model_path(session=session, settings=settings, job_id=job.id or 0)
        _name_free_now(session, merge)
    except DomainError as error:
        done = _settle(session, merge, FAILED, {"error": error.message})
        session.commit()
        return done
    entry = ModelEntry(
        name=merge.name,
        source="merge",
        path=path,
        description=merge.description
        or f"{merge.kind} ({merge.method}) of "
        + ", ".join(str(row["name"]) for row in merge.inputs),
        parameters=merge.estimate.get("parameters"),
        job_id=job.id,
        project_id=job.project_id,
    )
    session.add(entry)
    session.flush()
    assert entry.id is not None
    if not _settle(session, merge, SUCCEEDED, {"model_id": entry.id}):
        session.rollback()  # another pass registered it
        return False
    relation_of = {"base": "base", "input": "soup" if merge.kind == "soup" else "merged"}
    for row in merge.inputs:
        detail = {k: v for k, v in row.items() if k not in ("model_id", "name", "role")}
        catalog.add_parent(
            session=session,
            model_id=entry.id,
            parent_id=int(row["model_id"]),
            relation=relation_of[str(row["role"])],
            detail=detail,
        )
    session.commit()
    log.info("merge %s: registered model %s (%s)", merge.id, entry.id, merge.name)
    return True


def _name_free_now(session: Session, merge: Merge) -> None:
    taken = session.exec(select(ModelEntry).where(ModelEntry.name == merge.name)).first()
    if taken is not None:
        raise Conflict(f"a model named {merge.name!r} was registered meanwhile")


def collect_all(session: Session, settings: Settings) -> list[int]:
    """Settle every pending merge whose job has ended (a failed job that its retry policy
    will start again has not); the ids settled."""
    rows = session.exec(
        select(Merge, Job)
        .join(Job, col(Job.id) == col(Merge.job_id), isouter=True)
        .where(Merge.status == PENDING)
        .where(
            col(Job.id).is_(None)
            | (col(Job.status).in_([s.value for s in TERMINAL]) & col(Job.retry_at).is_(None))
        )
    ).all()
    settled: list[int] = []
    for merge, job in rows:
        try:
            if job is None:
                done = _settle(session, merge, FAILED, {"error": "its job was deleted"})
                session.commit()
            else:
                done = collect(session, settings, merge, job)
            if done:
                settled.append(merge.id or 0)
        except Exception:
            session.rollback()
            log.exception("merge %s could not be settled", merge.id)
    return settled


# --- soups and selections --------------------------------------------------------------------


def soup_request(*, session: Session, settings: Settings, request: SoupCreate) -> MergeCreate:
    """The merge a uniform soup is: linear, equal weights, over the chosen checkpoints."""
    chosen = _soup_steps(session, settings, request.job, request.steps, request.last)
    return MergeCreate.model_validate(
        {
            "name": request.name,
            "method": "linear",
            "models": [
                {"checkpoint": {"job": request.job, "step": step}, "weight": 1.0} for step in chosen
            ],
            "parameters": {"normalize": True},
            "dtype": request.dtype,
            "description": request.description
            or f"uniform soup of job {request.job}'s checkpoints at steps "
            + ", ".join(map(str, chosen)),
            "resources": request.resources,
            "priority": request.priority,
        }
    )


def _metric_candidates(
    session: Session, job_id: int, steps: list[int], key: str
) -> list[Candidate]:
    """Each checkpoint's value of a logged metric: the last logged at or before its step."""
    rows = session.exec(
        select(JobMetric.step, JobMetric.value)
        .where(JobMetric.job_id == job_id, JobMetric.key == key)
        .order_by(col(JobMetric.step))
    ).all()
    if not rows:
        keys = sorted(
            set(session.exec(select(JobMetric.key).where(JobMetric.job_id == job_id)).all())
        )
        raise InvalidInput(
            ("body", "metric"),
            f"job {job_id} logged no {key!r}; it logged: {', '.join(keys) or 'nothing'}",
        )
    candidates: list[Candidate] = []
    for step in steps:
        before = [value for at, value in rows if at <= step]
        candidates.append(Candidate(step=step, value=before[-1] if before else None))
    return candidates


def _evaluation_candidates(
    session: Session, settings: Settings, request: SelectCreate
) -> list[Candidate]:
    assert request.evaluations is not None
    by_path = {
        jobs.checkpoint_path(
            session=session, settings=settings, job_id=request.job, step=step
        ): step
        for step in jobs.kept_checkpoint_steps(
            session=session, settings=settings, job_id=request.job
        )
    }
    candidates: list[Candidate] = []
    for index, evaluation_id in enumerate(request.evaluations):
        loc = ("body", "evaluations", index)
        evaluation = session.get(Evaluation, evaluation_id)
        if evaluation is None:
            raise InvalidInput(loc, f"evaluation {evaluation_id} not found")
        if evaluation.status != evaluations.SUCCEEDED:
            raise InvalidInput(loc, f"evaluation {evaluation_id} is {evaluation.status}")
        model = session.get(ModelEntry, evaluation.model_id) if evaluation.model_id else None
        step = by_path.get(model.path) if model is not None else None
        if model is None or model.job_id != request.job or step is None:
            raise InvalidInput(
                loc,
                f"evaluation {evaluation_id} is not of a kept checkpoint of job {request.job}",
            )
        value = evaluations.score_of(evaluation, request.scorer)
        if value is None:
            raise InvalidInput(
                ("body", "scorer"),
                f"evaluation {evaluation_id} has no score under {request.scorer}",
            )
        candidates.append(Candidate(step=step, value=value, evaluation_id=evaluation_id))
    return candidates


def select_checkpoint(
    *, session: Session, settings: Settings, request: SelectCreate
) -> SelectionPublic:
    """Register the job's best checkpoint under the rule as `request.name`."""
    if session.exec(select(ModelEntry).where(ModelEntry.name == request.name)).first():
        raise Conflict(f"a model named {request.name!r} exists already")
    jobs.get_job(session=session, job_id=request.job)
    steps = jobs.kept_checkpoint_steps(session=session, settings=settings, job_id=request.job)
    if not steps:
        raise InvalidInput(("body", "job"), f"job {request.job} has no checkpoints on this node")
    if request.metric is not None:
        candidates = _metric_candidates(session, request.job, steps, request.metric)
        rule = f"{request.mode} of metric {request.metric}"
    else:
        candidates = _evaluation_candidates(session, settings, request)
        rule = f"{request.mode} of evaluation score" + (
            f" under {request.scorer}" if request.scorer else ""
        )
    scored = [c for c in candidates if c.value is not None and math.isfinite(c.value)]
    if not scored:
        raise InvalidInput(("body", "metric"), "no checkpoint has a value to compare")
    sign = 1.0 if request.mode == "max" else -1.0
    best = max(scored, key=lambda c: (sign * float(c.value or 0.0), -c.step))
    checkpoint = evaluations.job_model(session, settings, request.job, best.step)
    assert checkpoint.id is not None and best.value is not None
    entry = ModelEntry(
        name=request.name,
        source="job",
        path=checkpoint.path,
        description=request.description
        or f"job {request.job}'s checkpoint at step {best.step}: {rule} ({best.value:.6g})",
        parameters=checkpoint.parameters,
        job_id=request.job,
        project_id=checkpoint.project_id,
    )
    session.add(entry)
    session.flush()
    assert entry.id is not None
    catalog.add_parent(
        session=session,
        model_id=entry.id,
        parent_id=checkpoint.id,
        relation="selected",
        detail={"rule": rule, "step": best.step, "value": best.value},
    )
    return SelectionPublic(
        model_id=entry.id,
        name=entry.name,
        step=best.step,
        value=best.value,
        rule=rule,
        candidates=candidates,
    )


# --- lineage ---------------------------------------------------------------------------------

MAX_LINEAGE_NODES = 500


def lineage(*, session: Session, ref: str | int) -> ModelLineagePublic:
    """Every ancestor of a model: merge and soup parents, a selection's checkpoint, and the
    model each training job started from."""
    try:
        root = catalog.resolve_model(session=session, ref=ref)
    except InvalidInput as error:
        raise NotFound(error.message) from None
    assert root.id is not None
    nodes: dict[int, ModelEntry] = {root.id: root}
    edges: list[LineageEdge] = []
    queue = [root]
    while queue and len(nodes) < MAX_LINEAGE_NODES:
        entry = queue.pop()
        assert entry.id is not None
        parents = session.exec(select(ModelLineage).where(ModelLineage.model_id == entry.id)).all()
        found = [(row.parent_id, row.relation, dict(row.detail)) for row in parents]
        if not found and entry.source == "job" and entry.job_id is not None:
            job = session.get(Job, entry.job_id)
            if job is not None and job.model_id is not None:
                detail = {"job": job.id, "algorithm": f"{job.backend}/{job.algorithm}"}
                found.append((job.model_id, "trained", detail))
        for parent_id, relation, detail in found:
            edges.append(
                LineageEdge(child=entry.id, parent=parent_id, relation=relation, detail=detail)
            )
            if parent_id not in nodes:
                parent = session.get(ModelEntry, parent_id)
                if parent is not None:
                    nodes[parent_id] = parent
                    queue.append(parent)
    return ModelLineagePublic(
        model_id=root.id,
        nodes=[
            LineageNode(id=e.id or 0, name=e.name, source=e.source, job_id=e.job_id)
            for e in nodes.values()
        ],
        edges=[e for e in edges if e.parent in nodes],
    )


def methods() -> list[dict[str, Any]]:
    """Each method and what it takes (for the dashboard and the CLI)."""
    return [
        {
            "method": name,
            "needs_base": rule.base,
            "models": [rule.min_models, rule.max_models],
            "per_model": list(rule.per_model),
            "required": list(rule.required),
            "parameters": list(rule.shared),
            "required_parameters": list(rule.shared_required),
        }
        for name, rule in RULES.items()
    ]


# --- sweeps ----------------------------------------------------------------------------------

_GLOBAL_AXES = ("t", "lambda")
_MODEL_AXES = ("weight", "density", "gamma", "epsilon")


def _grid_points(request: SweepCreate) -> list[dict[str, float]]:
    """Every combination of the grid's values, in order (the first axis varies slowest)."""
    axes = list(request.grid.items())
    for key, values in axes:
        loc = ("body", "grid", key)
        if not 1 <= len(values) <= MAX_SWEEP_VALUES:
            raise InvalidInput(loc, f"give 1 to {MAX_SWEEP_VALUES} values")
        if len(set(values)) != len(values):
            raise InvalidInput(loc, "values must not repeat")
        if any(not math.isfinite(v) for v in values):
            raise InvalidInput(loc, "values must be finite numbers")
        parts = key.split(".")
        if key in _GLOBAL_AXES:
            continue
        if len(parts) == 3 and parts[0] == "models" and parts[2] in _MODEL_AXES:
            if parts[1].isdigit() and int(parts[1]) < len(request.merge.models):
                continue
            raise InvalidInput(
                loc, f"the merge has models 0 to {len(request.merge.models) - 1}, not {parts[1]}"
            )
        raise InvalidInput(
            loc,
            "sweep t, lambda, or models.I.weight, models.I.density, models.I.gamma or "
            "models.I.epsilon",
        )
    points = [
        dict(zip([k for k, _ in axes], combo, strict=True))
        for combo in product(*[values for _, values in axes])
    ]
    if not 2 <= len(points) <= MAX_SWEEP_CANDIDATES:
        raise InvalidInput(
            ("body", "grid"),
            f"a sweep has 2 to {MAX_SWEEP_CANDIDATES} candidates, not {len(points)}",
        )
    return points


def _candidate_request(request: SweepCreate, index: int, point: dict[str, float]) -> MergeCreate:
    body = request.merge.model_dump(mode="json", by_alias=True)
    for key, value in point.items():
        if key in _GLOBAL_AXES:
            body["parameters"][key] = value
        else:
            _, model, field = key.split(".")
            body["models"][int(model)][field] = value
    body["name"] = f"{request.name}.{index}"
    body["priority"] = request.priority
    body["description"] = f"candidate {index} of sweep {request.name}: " + ", ".join(
        f"{k} {v:g}" for k, v in point.items()
    )
    try:
        return MergeCreate.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        axis = next(iter(point))
        raise InvalidInput(
            ("body", "grid", axis), f"candidate {index} ({point}): {first['msg']}"
        ) from None


def _check_evaluation(session: Session, request: SweepCreate) -> None:
    spec = request.evaluate
    try:
        scorer = scoring.parse(spec.scorer)
    except InvalidInput as error:
        raise InvalidInput(("body", "evaluate", "scorer"), error.message) from None
    if scorer.deferred:
        raise InvalidInput(
            ("body", "evaluate", "scorer"), f"{scorer.spec} runs on a worker; give an inline scorer"
        )
    try:
        dataset, _ = dataset_versions.resolve(session=session, ref=spec.dataset)
    except InvalidInput as error:
        raise InvalidInput(("body", "evaluate", "dataset"), error.message) from None
    if not formats.can_feed(dataset.format, "rl"):
        raise InvalidInput(
            ("body", "evaluate", "dataset"),
            f"dataset {dataset.name!r} has format {dataset.format!r}; an evaluation needs "
            "prompt/answer data",
        )


def check_sweep(*, session: Session, request: SweepCreate) -> None:
    """A sweep's grid and evaluation, before its models are known (a pipeline's submit)."""
    _grid_points(request)
    _check_evaluation(session, request)


def create_sweep(
    *, session: Session, settings: Settings, request: SweepCreate, actor: str
) -> tuple[Sweep, list[Job]]:
    """Store the sweep and one merge (and its queued job) per grid point; nothing is written
    when any candidate is refused."""
    points = _grid_points(request)
    _check_evaluation(session, request)
    _name_free(session, request.name)
    candidates: list[dict[str, Any]] = []
    started: list[Job] = []
    for index, point in enumerate(points, start=1):
        merge, job = create(
            session=session,
            settings=settings,
            request=_candidate_request(request, index, point),
            actor=actor,
            kind="sweep",
        )
        started.append(job)
        candidates.append(
            {
                "index": index,
                "name": merge.name,
                "values": point,
                "merge_id": merge.id,
                "evaluation_id": None,
                "score": None,
                "status": "merging",
            }
        )
    sweep = Sweep(
        name=request.name,
        method=request.merge.method,
        grid=request.grid,
        evaluate={**request.evaluate.model_dump(mode="json"), "priority": request.priority},
        mode=request.mode,
        candidates=candidates,
        status=PENDING,
        created_by=actor,
    )
    session.add(sweep)
    session.flush()
    return sweep, started


def get_sweep(*, session: Session, sweep_id: int) -> Sweep:
    """A sweep, or NotFound."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return sweep


def sweep_named(*, session: Session, name: str) -> Sweep | None:
    """The latest sweep that registers (or registered) its best as `name`."""
    return session.exec(
        select(Sweep).where(Sweep.name == name).order_by(col(Sweep.id).desc())
    ).first()


def list_sweeps(*, session: Session, limit: int = 100) -> Sequence[Sweep]:
    """Sweeps, newest first."""
    return session.exec(select(Sweep).order_by(col(Sweep.id).desc()).limit(limit)).all()


def leaderboard(sweep: Sweep) -> list[LeaderboardRow]:
    """The candidates, best first by the sweep's rule (ties to the earlier candidate), then
    those that could not be merged or evaluated."""
    sign = 1.0 if sweep.mode == "max" else -1.0
    scored = sorted(
        (c for c in sweep.candidates if c.get("score") is not None),
        key=lambda c: (-sign * float(c["score"]), int(c["index"])),
    )
    rest = [c for c in sweep.candidates if c.get("score") is None]
    rows: list[LeaderboardRow] = []
    for rank, candidate in enumerate([*scored, *rest], start=1):
        rows.append(
            LeaderboardRow(
                rank=rank if candidate.get("score") is not None else None,
                index=int(candidate["index"]),
                name=str(candidate["name"]),
                values=dict(candidate["values"]),
                merge_id=int(candidate["merge_id"]),
                model_id=candidate.get("model_id"),
                evaluation_id=candidate.get("evaluation_id"),
                score=candidate.get("score"),
                status=str(candidate["status"]),
            )
        )
    return rows


def _advance_candidate(
    session: Session, settings: Settings, sweep: Sweep, candidate: dict[str, Any]
) -> Job | None:
    """Move one candidate on: evaluate it once merged, score it once evaluated. The job of an
    evaluation it started (to dispatch after the commit)."""
    merge = session.get(Merge, candidate["merge_id"])
    if merge is None:
        candidate.update(status=FAILED, error="its merge was deleted")
        return None
    if candidate["evaluation_id"] is None:
        if merge.status == PENDING:
            return None
        if merge.status != SUCCEEDED or merge.model_id is None:
            candidate.update(status=FAILED, error=f"merge {merge.status}: {merge.error}")
            return None
        spec = sweep.evaluate
        evaluation, job = evaluations.create(
            session=session,
            settings=settings,
            request=EvaluationCreate.model_validate(
                {
                    "name": f"{merge.name} (sweep {sweep.name})"[:200],
                    "model": merge.model_id,
                    "dataset": spec["dataset"],
                    "scorer": spec["scorer"],
                    "generation": spec["generation"],
                    "resources": spec["resources"],
                    "priority": spec.get("priority", 0),
                }
            ),
            actor=sweep.created_by,
            idempotency_key=f"sweep-{sweep.id}-candidate-{candidate['index']}",
        )
        candidate.update(evaluation_id=evaluation.id, model_id=merge.model_id, status="evaluating")
        return job if job.status == JobStatus.PENDING.value else None
    judged = session.get(Evaluation, candidate["evaluation_id"])
    if judged is None or judged.status == evaluations.PENDING:
        return None
    if judged.status != evaluations.SUCCEEDED:
        candidate.update(status=FAILED, error=f"evaluation {judged.status}")
        return None
    candidate.update(
        status="evaluated", score=evaluations.score_of(judged, sweep.evaluate["scorer"])
    )
    return None


def _finish_sweep(session: Session, sweep: Sweep) -> None:
    board = leaderboard(sweep)
    best = board[0] if board and board[0].rank is not None else None
    if best is None or best.model_id is None:
        sweep.status, sweep.error = FAILED, "no candidate was merged and evaluated"
        sweep.finished_at = utcnow()
        return
    chosen = session.get(ModelEntry, best.model_id)
    if (
        chosen is None
        or session.exec(select(ModelEntry).where(ModelEntry.name == sweep.name)).first()
    ):
        sweep.status = FAILED
        sweep.error = f"the best candidate {best.name} could not be registered as {sweep.name}"
        sweep.finished_at = utcnow()
        return
    rule = f"{sweep.mode} of {sweep.evaluate['scorer']} on {sweep.evaluate['dataset']}"
    entry = ModelEntry(
        name=sweep.name,
        source="merge",
        path=chosen.path,
        description=f"best of sweep {sweep.id} ({sweep.method}): {best.name}, "
        + ", ".join(f"{k} {v:g}" for k, v in best.values.items()),
        parameters=chosen.parameters,
        job_id=chosen.job_id,
        project_id=chosen.project_id,
    )
    session.add(entry)
    session.flush()
    assert entry.id is not None and chosen.id is not None
    catalog.add_parent(
        session=session,
        model_id=entry.id,
        parent_id=chosen.id,
        relation="selected",
        detail={"rule": rule, "score": best.score, **best.values},
    )
    sweep.status, sweep.model_id, sweep.finished_at = SUCCEEDED, entry.id, utcnow()


def advance_sweeps(session: Session, settings: Settings) -> tuple[list[int], list[Job]]:
    """Move every pending sweep on; (sweeps that ended, evaluation jobs to dispatch)."""
    ended: list[int] = []
    started: list[Job] = []
    for sweep in session.exec(select(Sweep).where(Sweep.status == PENDING)).all():
        candidates = [dict(c) for c in sweep.candidates]
        try:
            for candidate in candidates:
                if candidate["status"] in ("evaluated", FAILED):
                    continue
                job = _advance_candidate(session, settings, sweep, candidate)
                if job is not None:
                    started.append(job)
            sweep.candidates = candidates
            if all(c["status"] in ("evaluated", FAILED) for c in candidates):
                _finish_sweep(session, sweep)
                ended.append(sweep.id or 0)
            session.add(sweep)
            session.commit()
        except Exception:
            session.rollback()
            log.exception("sweep %s could not be moved on", sweep.id)
    return ended, started


# --- greedy soups ----------------------------------------------------------------------------


def _soup_steps(
    session: Session, settings: Settings, job_id: int, steps: list[int] | None, last: int | None
) -> list[int]:
    kept = jobs.kept_checkpoint_steps(session=session, settings=settings, job_id=job_id)
    if steps is not None:
        missing = sorted(set(steps) - set(kept))
        if missing:
            have = ", ".join(map(str, kept)) or "none"
            raise InvalidInput(
                ("body", "steps"),
                f"job {job_id} has no checkpoint at steps {missing} (it has: {have})",
            )
        return sorted(steps)
    assert last is not None
    if len(kept) < last:
        raise InvalidInput(
            ("body", "last"), f"job {job_id} has {len(kept)} checkpoints, fewer than {last}"
        )
    return kept[-last:]


def _evaluate_model(
    session: Session,
    settings: Settings,
    spec: dict[str, Any],
    model_id: int,
    name: str,
    key: str,
    actor: str,
) -> tuple[Evaluation, Job]:
    return evaluations.create(
        session=session,
        settings=settings,
        request=EvaluationCreate.model_validate(
            {
                "name": name[:200],
                "model": model_id,
                "dataset": spec["dataset"],
                "scorer": spec["scorer"],
                "generation": spec["generation"],
                "resources": spec["resources"],
                "priority": spec.get("priority", 0),
            }
        ),
        actor=actor,
        idempotency_key=key,
    )


def create_greedy_soup(
    *, session: Session, settings: Settings, request: GreedySoupCreate, actor: str
) -> tuple[GreedySoup, list[Job]]:
    """Store the soup and an evaluation (and its queued job) per checkpoint."""
    jobs.get_job(session=session, job_id=request.job)
    steps = _soup_steps(session, settings, request.job, request.steps, request.last)
    probe = SweepCreate.model_validate(
        {
            "name": request.name,
            "merge": {"method": "linear", "models": [{"model": "x"}, {"model": "y"}]},
            "grid": {"t": [0.0, 1.0]},
            "evaluate": request.evaluate.model_dump(mode="json"),
        }
    )
    _check_evaluation(session, probe)
    _name_free(session, request.name)
    spec = {**request.evaluate.model_dump(mode="json"), "priority": request.priority}
    soup = GreedySoup(
        name=request.name,
        job_id=request.job,
        evaluate=spec,
        mode=request.mode,
        state={},
        status=PENDING,
        created_by=actor,
    )
    session.add(soup)
    session.flush()
    singles: list[dict[str, Any]] = []
    started: list[Job] = []
    for step in steps:
        checkpoint = evaluations.job_model(session, settings, request.job, step)
        assert checkpoint.id is not None
        evaluation, job = _evaluate_model(
            session,
            settings,
            spec,
            checkpoint.id,
            f"{checkpoint.name} (greedy soup {request.name})",
            f"greedy-soup-{soup.id}-step-{step}",
            actor,
        )
        started.append(job)
        singles.append(
            {"step": step, "model_id": checkpoint.id, "evaluation_id": evaluation.id, "score": None}
        )
    soup.state = {
        "singles": singles,
        "order": [],
        "soup": [],
        "score": None,
        "trial": None,
        "trials": [],
    }
    session.add(soup)
    session.flush()
    return soup, started


def get_greedy_soup(*, session: Session, soup_id: int) -> GreedySoup:
    """A greedy soup, or NotFound."""
    soup = session.get(GreedySoup, soup_id)
    if soup is None:
        raise NotFound(f"greedy soup {soup_id} not found")
    return soup


def _score(session: Session, evaluation_id: int | None, scorer: str) -> tuple[str, float | None]:
    """(pending | scored | failed, the score) of an evaluation."""
    judged = session.get(Evaluation, evaluation_id) if evaluation_id is not None else None
    if judged is None:
        return FAILED, None
    if judged.status == evaluations.PENDING:
        return PENDING, None
    if judged.status != evaluations.SUCCEEDED:
        return FAILED, None
    value = evaluations.score_of(judged, scorer)
    return ("scored", value) if value is not None else (FAILED, None)


def _better_or_equal(mode: str, new: float, old: float) -> bool:
    return new >= old if mode == "max" else new <= old


def _grow(
    session: Session, settings: Settings, soup: GreedySoup, state: dict[str, Any]
) -> Job | None:
    """One step of the greedy loop; the job of an evaluation or merge it started, if any."""
    scorer = soup.evaluate["scorer"]
    trial = state["trial"]
    if trial is None:
        done_steps = {t["step"] for t in state["trials"]}
        untried = [s for s in state["order"] if s not in state["soup"] and s not in done_steps]
        if not untried:
            state["done"] = True
            return None
        step = untried[0]
        index = len(state["trials"]) + 1
        members = [*state["soup"], step]
        request = MergeCreate.model_validate(
            {
                "name": f"{soup.name}.trial-{index}",
                "method": "linear",
                "models": [
                    {"checkpoint": {"job": soup.job_id, "step": s}, "weight": 1.0} for s in members
                ],
                "parameters": {"normalize": True},
                "description": f"greedy soup {soup.name}, trial {index}: steps "
                + ", ".join(map(str, members)),
                "priority": soup.evaluate.get("priority", 0),
            }
        )
        merge, job = create(
            session=session,
            settings=settings,
            request=request,
            actor=soup.created_by,
            kind="soup",
            idempotency_key=f"greedy-soup-{soup.id}-trial-{index}",
        )
        state["trial"] = {"step": step, "merge_id": merge.id, "evaluation_id": None}
        return job if job.status == JobStatus.PENDING.value else None
    tried = session.get(Merge, trial["merge_id"])
    if trial["evaluation_id"] is None:
        if tried is None or tried.status not in (PENDING, SUCCEEDED):
            state["trials"].append({**trial, "score": None, "kept": False})
            state["trial"] = None
            return None
        if tried.status == PENDING or tried.model_id is None:
            return None
        evaluation, job = _evaluate_model(
            session,
            settings,
            soup.evaluate,
            tried.model_id,
            f"{tried.name} (greedy soup {soup.name})",
            f"greedy-soup-{soup.id}-trial-{len(state['trials']) + 1}-evaluation",
            soup.created_by,
        )
        trial["evaluation_id"] = evaluation.id
        return job if job.status == JobStatus.PENDING.value else None
    status, value = _score(session, trial["evaluation_id"], scorer)
    if status == PENDING:
        return None
    kept = value is not None and _better_or_equal(soup.mode, value, float(state["score"]))
    state["trials"].append({**trial, "score": value, "kept": kept})
    if kept and tried is not None:
        state["soup"].append(trial["step"])
        state["score"], state["soup_model_id"] = value, tried.model_id
    state["trial"] = None
    return None


def _finish_greedy(session: Session, soup: GreedySoup, state: dict[str, Any]) -> None:
    chosen = session.get(ModelEntry, state.get("soup_model_id"))
    if (
        chosen is None
        or session.exec(select(ModelEntry).where(ModelEntry.name == soup.name)).first()
    ):
        soup.status = FAILED
        soup.error = f"the soup could not be registered as {soup.name}"
        soup.finished_at = utcnow()
        return
    entry = ModelEntry(
        name=soup.name,
        source="merge" if chosen.source == "merge" else "job",
        path=chosen.path,
        description=f"greedy soup of job {soup.job_id}'s checkpoints at steps "
        + ", ".join(map(str, state["soup"]))
        + f" ({soup.mode} of {soup.evaluate['scorer']}: {state['score']:.6g})",
        parameters=chosen.parameters,
        job_id=chosen.job_id,
        project_id=chosen.project_id,
    )
    session.add(entry)
    session.flush()
    assert entry.id is not None
    by_step = {s["step"]: s for s in state["singles"]}
    for step in state["soup"]:
        catalog.add_parent(
            session=session,
            model_id=entry.id,
            parent_id=int(by_step[step]["model_id"]),
            relation="soup",
            detail={"greedy": True, "step": step, "score": by_step[step]["score"]},
        )
    soup.status, soup.model_id, soup.finished_at = SUCCEEDED, entry.id, utcnow()


def _advance_greedy(
    session: Session, settings: Settings, soup: GreedySoup, state: dict[str, Any]
) -> Job | None:
    scorer = soup.evaluate["scorer"]
    if not state["order"]:
        for single in state["singles"]:
            if single["score"] is None and not single.get("failed"):
                status, value = _score(session, single["evaluation_id"], scorer)
                if status == PENDING:
                    return None
                single["score"], single["failed"] = value, status == FAILED
        scored = [s for s in state["singles"] if s["score"] is not None]
        if not scored:
            state["done"] = True
            return None
        sign = 1.0 if soup.mode == "max" else -1.0
        ranked = sorted(scored, key=lambda s: (-sign * float(s["score"]), int(s["step"])))
        best = ranked[0]
        state["order"] = [int(s["step"]) for s in ranked]
        state["soup"], state["score"], state["soup_model_id"] = (
            [best["step"]],
            best["score"],
            best["model_id"],
        )
    return _grow(session, settings, soup, state)


def advance_greedy_soups(session: Session, settings: Settings) -> list[Job]:
    """Move every pending greedy soup on; the jobs to dispatch."""
    started: list[Job] = []
    for soup in session.exec(select(GreedySoup).where(GreedySoup.status == PENDING)).all():
        state = json.loads(json.dumps(soup.state))  # a copy the JSON column sees as changed
        try:
            job = _advance_greedy(session, settings, soup, state)
            if job is not None:
                started.append(job)
            if state.pop("done", False):
                if state["soup"]:
                    _finish_greedy(session, soup, state)
                else:
                    soup.status, soup.error = FAILED, "no checkpoint could be evaluated"
                    soup.finished_at = utcnow()
            soup.state = state
            session.add(soup)
            session.commit()
        except Exception:
            session.rollback()
            log.exception("greedy soup %s could not be moved on", soup.id)
    return started
