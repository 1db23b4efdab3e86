"""The compute configurator: a job's memory per GPU before it runs, configurations that fit,
which models fit each host's GPUs, admission at submission, and the estimator's own error.

Service functions know nothing of HTTP. A job is sized from its model's config.json (a local
catalog model; hub models are not sized) and its validated hyperparameters.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from training_platform.backends.base import get_backend, validate_parameters
from training_platform.catalog import service as catalog
from training_platform.catalog.models import ModelEntry
from training_platform.compute.architecture import Architecture, ArchitectureError
from training_platform.compute.estimator import Estimate, Workload, estimate
from training_platform.compute.models import MemoryPrediction
from training_platform.core.errors import DomainError, InvalidInput
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.scheduling import service as scheduling
from training_platform.scheduling.models import GpuDevice, Host
from training_platform.scheduling.placement import matches

SIZED = {
    ("trl", "sft"),
    ("trl", "dpo"),
    ("verl", "sft"),
    ("verl", "ppo"),
    ("verl", "grpo"),
    ("verl", "gspo"),
}
RECOMMENDED_LORA_RANK = 16
MAX_OPTIONS = 8


@dataclass(frozen=True)
class Devices:
    """The GPUs a job could run on: the largest matching device and how many a host has."""

    name: str
    memory_mb: int
    count: int
    host: str


@dataclass(frozen=True)
class Option:
    """A configuration of the job: what to change, and its memory per GPU."""

    changes: dict[str, Any]  # {"hyperparameters": {...}, "resources": {...}}
    summary: str
    estimate: Estimate
    gpus: int
    cost: float


@dataclass(frozen=True)
class Sized:
    """A job sized: its workload, the estimate, the devices it could use and the verdict."""

    arch: Architecture
    workload: Workload
    estimate: Estimate
    devices: Devices | None
    fits: bool | None  # None: no device to compare with

    def headroom_mb(self) -> int | None:
        return None if self.devices is None else self.devices.memory_mb - self.estimate.device_mb


# --- workloads -------------------------------------------------------------------------


def workload_of(
    backend: str, algorithm: str, parameters: BaseModel, gpus: int, gpu_memory_mb: int | None
) -> Workload | None:
    """What a validated job asks of each GPU; None for the pairs the estimator does not size."""
    if (backend, algorithm) not in SIZED:
        return None
    p: Any = parameters
    lora = p.lora
    common: dict[str, Any] = {
        "algorithm": algorithm,
        "backend": backend,
        "lora_rank": lora.rank if lora is not None else None,
        "lora_targets": lora.target_modules if lora is not None else "all-linear",
        "gpus": max(gpus, 1),
        "gpu_memory_mb": gpu_memory_mb,
    }
    if backend == "trl":
        return Workload(
            **common,
            micro_batch=p.per_device_train_batch_size,
            seq_len=p.max_length,
            gradient_checkpointing=p.gradient_checkpointing,
        )
    common |= {"param_offload": p.param_offload, "optimizer_offload": p.optimizer_offload}
    if algorithm == "sft":
        return Workload(**common, micro_batch=p.micro_batch_size_per_gpu, seq_len=p.max_length)
    return Workload(
        **common,
        micro_batch=p.micro,
        seq_len=p.max_prompt_length + p.max_response_length,
        rollout_tp=p.rollout.tensor_model_parallel_size,
        gpu_memory_utilization=p.rollout.gpu_memory_utilization,
    )


def architecture_of(settings: Settings, model: ModelEntry) -> Architecture:
    """The catalog model's architecture from its config.json; hub models are not sized."""
    if model.source == "hub":
        raise ArchitectureError(f"model {model.name!r} is a hub model: its config is not local")
    directory, _ = catalog.model_location(settings, model)
    return Architecture.from_directory(Path(directory))


def devices_for(session: Session, resources: dict[str, Any]) -> Devices | None:
    """The largest GPU the job's resources could be placed on (busy or not)."""
    demand = scheduling.demand_of(resources)
    if demand.gpus == 0:
        return None
    slots = [
        s
        for s in scheduling.all_slots(session, include_occupied=True)
        if s.kind == "gpu" and matches(demand, s)
    ]
    if not slots:
        return None
    best = max(slots, key=lambda s: s.memory_total_mb)
    return Devices(
        name=best.name,
        memory_mb=best.memory_total_mb,
        count=sum(1 for s in slots if s.host == best.host),
        host=best.host,
    )


def longest_row(
    session: Session, model: ModelEntry, dataset_id: int | None, version: int | None
) -> int | None:
    """The longest row of the dataset version in the model's tokens, if an analysis with that
    model's tokenizer counted it (the newest such)."""
    if dataset_id is None or version is None:
        return None
    from training_platform.datasets.models import DatasetAnalysis

    for analysis in session.exec(
        select(DatasetAnalysis)
        .where(
            DatasetAnalysis.dataset_id == dataset_id,
            DatasetAnalysis.version == version,
            DatasetAnalysis.status == "succeeded",
        )
        .order_by(col(DatasetAnalysis.id).desc())
    ):
        counted_with = (analysis.options or {}).get("model") or {}
        total = ((analysis.result or {}).get("lengths") or {}).get("total") or {}
        if counted_with.get("id") == model.id and total.get("n"):
            return int(total["max"])
    return None


def size(
    *,
    session: Session,
    settings: Settings,
    model: ModelEntry,
    backend: str,
    algorithm: str,
    parameters: BaseModel,
    resources: dict[str, Any],
    dataset_id: int | None = None,
    dataset_version: int | None = None,
    arch: Architecture | None = None,
) -> Sized | None:
    """Size a validated job; None when the pair is not sized or the model has no local config
    (`arch`: the model's architecture when the caller has read it already).

    A batch is padded to its longest row: with an analysis of the dataset version in the
    model's tokens, rows are as long as the longest one (at most max_length), else max_length.
    """
    devices = devices_for(session, resources)
    workload = workload_of(
        backend,
        algorithm,
        parameters,
        int(resources.get("gpus", 0)),
        devices.memory_mb if devices else None,
    )
    if workload is None:
        return None
    longest = longest_row(session, model, dataset_id, dataset_version)
    note = None
    if longest is not None and algorithm == "sft" and 0 < longest < workload.seq_len:
        workload = replace(workload, seq_len=longest)
        note = f"rows padded to the dataset's longest: {longest} tokens (its analysis)"
    if arch is None:
        try:
            arch = architecture_of(settings, model)
        except (ArchitectureError, DomainError):
            return None
    result = estimate(arch, workload)
    if note is not None:
        result = replace(result, basis=[*result.basis, note])
    fits = None if devices is None else result.device_mb <= devices.memory_mb
    return Sized(arch, workload, result, devices, fits)


# --- recommendations -------------------------------------------------------------------


def _halvings(value: int) -> list[int]:
    out = [value]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def _candidates(workload: Workload, max_gpus: int) -> Iterable[tuple[Workload, float]]:
    """Variations of the workload, each with a cost (slower, bigger): more GPUs (verl's FSDP
    shards the states), smaller micro batches, checkpointing, LoRA, offloads, a smaller rollout
    share."""
    verl = workload.backend == "verl"
    gpu_choices = [workload.gpus] + (
        [n for n in (2, 4, 8, 16, 32) if workload.gpus < n <= max_gpus] if verl else []
    )
    loras = [workload.lora_rank] + ([] if workload.lora else [RECOMMENDED_LORA_RANK])
    offloads = list(
        dict.fromkeys(
            [(workload.param_offload, workload.optimizer_offload)]
            + ([(workload.param_offload, True), (True, True)] if verl else [])
        )
    )
    shares = [workload.gpu_memory_utilization]
    if verl and workload.algorithm != "sft":
        shares += [s for s in (0.4, 0.3) if s < workload.gpu_memory_utilization]
    for gpus, micro, checkpointing, lora, (param_off, optimizer_off), share in product(
        gpu_choices,
        _halvings(workload.micro_batch),
        sorted({workload.gradient_checkpointing, True}),
        loras,
        offloads,
        shares,
    ):
        cost = (
            4.0 * (gpus / workload.gpus - 1)
            + 0.5 * ((workload.micro_batch // micro).bit_length() - 1)
            + (1.0 if checkpointing and not workload.gradient_checkpointing else 0)
            + (3.0 if lora is not None and not workload.lora else 0)
            + (2.0 if optimizer_off and not workload.optimizer_offload else 0)
            + (2.0 if param_off and not workload.param_offload else 0)
            + (1.0 if share != workload.gpu_memory_utilization else 0)
        )
        candidate = replace(
            workload,
            gpus=gpus,
            micro_batch=micro,
            gradient_checkpointing=checkpointing,
            lora_rank=lora,
            param_offload=param_off,
            optimizer_offload=optimizer_off,
            gpu_memory_utilization=share,
        )
        yield candidate, cost


def _changes(base: Workload, new: Workload, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The job-form fields that turn `base` into `new`."""
    hyper: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    if new.micro_batch != base.micro_batch:
        if base.backend == "trl":
            hyper["per_device_train_batch_size"] = new.micro_batch
            # the same examples per optimizer step
            accumulation = int(hyperparameters.get("gradient_accumulation_steps", 1))
            hyper["gradient_accumulation_steps"] = (
                accumulation * base.micro_batch // new.micro_batch
            )
        else:
            hyper["micro_batch_size_per_gpu"] = new.micro_batch
    if new.gradient_checkpointing != base.gradient_checkpointing:
        hyper["gradient_checkpointing"] = new.gradient_checkpointing
    if new.lora_rank != base.lora_rank:
        hyper["lora"] = {"rank": new.lora_rank}
    if new.param_offload != base.param_offload:
        hyper["param_offload"] = new.param_offload
    if new.optimizer_offload != base.optimizer_offload:
        hyper["optimizer_offload"] = new.optimizer_offload
    if new.gpu_memory_utilization != base.gpu_memory_utilization:
        hyper["rollout"] = {"gpu_memory_utilization": new.gpu_memory_utilization}
    if new.gpus != base.gpus:
        resources["gpus"] = new.gpus
    return {"hyperparameters": hyper, "resources": resources}


def apply_changes(hyperparameters: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The job's hyperparameters with an option's changes applied."""
    out = {k: v for k, v in hyperparameters.items()}
    for key, value in changes.get("hyperparameters", {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _describe(changes: dict[str, Any]) -> str:
    hyper, resources = changes["hyperparameters"], changes["resources"]
    parts = []
    if "gpus" in resources:
        parts.append(f"{resources['gpus']} GPUs")
    for key in ("per_device_train_batch_size", "micro_batch_size_per_gpu"):
        if key in hyper:
            parts.append(f"micro batch {hyper[key]}")
    if "gradient_accumulation_steps" in hyper:
        parts.append(f"accumulation {hyper['gradient_accumulation_steps']}")
    if hyper.get("gradient_checkpointing"):
        parts.append("gradient checkpointing")
    if "lora" in hyper:
        parts.append(f"LoRA r={hyper['lora']['rank']}")
    if hyper.get("param_offload"):
        parts.append("parameters offloaded")
    if hyper.get("optimizer_offload"):
        parts.append("optimizer offloaded")
    if "rollout" in hyper:
        parts.append(f"rollout memory share {hyper['rollout']['gpu_memory_utilization']:g}")
    return ", ".join(parts) or "as submitted"


def recommend(
    *,
    arch: Architecture,
    workload: Workload,
    devices: Devices,
    hyperparameters: dict[str, Any],
    backend_check: Any = None,
) -> list[Option]:
    """Configurations that fit the devices, cheapest first (fewest GPUs, then least slowdown).

    `backend_check(changes) -> bool` drops those the backend's own rules refuse.
    """
    seen: set[str] = set()
    options = []
    for candidate, cost in _candidates(workload, devices.count):
        result = estimate(arch, candidate)
        if result.device_mb > devices.memory_mb:
            continue
        changes = _changes(workload, candidate, hyperparameters)
        summary = _describe(changes)
        if summary in seen or (backend_check is not None and not backend_check(changes)):
            continue
        seen.add(summary)
        options.append(Option(changes, summary, result, candidate.gpus, cost))
    options.sort(key=lambda o: (o.cost, o.estimate.device_mb))
    return options[:MAX_OPTIONS]


def options_for(
    sized: Sized, backend: str, algorithm: str, hyperparameters: dict[str, Any]
) -> list[Option]:
    """The configurations of a sized job that fit its devices and pass the backend's rules."""
    if sized.devices is None:
        return []
    return recommend(
        arch=sized.arch,
        workload=sized.workload,
        devices=sized.devices,
        hyperparameters=hyperparameters,
        backend_check=backend_check(backend, algorithm, hyperparameters, sized.workload.gpus),
    )


def backend_check(backend: str, algorithm: str, hyperparameters: dict[str, Any], gpus: int) -> Any:
    """A check that an option's changes still pass the backend's validation."""
    pair = get_backend(backend, algorithm)

    def check(changes: dict[str, Any]) -> bool:
        try:
            validate_parameters(
                pair,
                apply_changes(hyperparameters, changes),
                gpus=changes["resources"].get("gpus", gpus),
            )
        except InvalidInput:
            return False
        return True

    return check


# --- admission -------------------------------------------------------------------------


def admission_problem(sized: Sized, options: Sequence[Option]) -> tuple[str, dict[str, Any]] | None:
    """Why a sized job cannot fit its devices, and the data a client shows; None if it fits."""
    if sized.fits is not False or sized.devices is None:
        return None
    d = sized.devices
    message = (
        f"the job needs ~{sized.estimate.device_mb} MB per GPU ({sized.estimate.phase} peak: "
        f"{breakdown_text(sized.estimate)}) but the largest device it can use has "
        f"{d.memory_mb} MB ({d.name} on {d.host})"
    )
    if options:
        message += f"; this fits: {options[0].summary} (~{options[0].estimate.device_mb} MB)"
    else:
        message += "; no configuration the estimator tries fits: use larger GPUs"
    ctx = {
        "estimate": public_estimate(sized.estimate),
        "devices": d.__dict__,
        "fits": public_option(options[0]) if options else None,
    }
    return message, ctx


def breakdown_text(result: Estimate) -> str:
    """The largest parts of an estimate, in MB."""
    parts = sorted(result.breakdown.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {value // 2**20} MB" for name, value in parts if value)[:300]


def public_estimate(result: Estimate) -> dict[str, Any]:
    """An estimate as the API shows it, in MB."""
    return {
        "peak_mb": result.peak_mb,
        "device_mb": result.device_mb,
        "phase": result.phase,
        "breakdown_mb": {k: -(-v // 2**20) for k, v in result.breakdown.items()},
        "basis": result.basis,
    }


def public_option(option: Option) -> dict[str, Any]:
    """A recommendation as the API shows it."""
    return {
        "summary": option.summary,
        "changes": option.changes,
        "gpus": option.gpus,
        "device_mb": option.estimate.device_mb,
        "estimate": public_estimate(option.estimate),
    }


def admit(
    *,
    session: Session,
    settings: Settings,
    backend: str,
    algorithm: str,
    model: ModelEntry,
    parameters: BaseModel,
    hyperparameters: dict[str, Any],
    resources: dict[str, Any],
    dataset_id: int | None = None,
    dataset_version: int | None = None,
) -> tuple[Sized | None, str | None]:
    """Size a GPU job at submission. One that cannot fit any device it may use is refused
    (InvalidInput on resources, with the estimate and the cheapest configuration that fits)
    or, per the admission setting, let through with a warning (returned)."""
    if settings.admission == "off" or int(resources.get("gpus", 0)) == 0:
        return None, None
    sized = size(
        session=session,
        settings=settings,
        model=model,
        backend=backend,
        algorithm=algorithm,
        parameters=parameters,
        resources=resources,
        dataset_id=dataset_id,
        dataset_version=dataset_version,
    )
    if sized is None or sized.fits is not False or sized.devices is None:
        return sized, None
    problem = admission_problem(sized, options_for(sized, backend, algorithm, hyperparameters))
    assert problem is not None
    message, ctx = problem
    if settings.admission == "refuse":
        raise InvalidInput(("body", "resources"), message, kind="memory", ctx=ctx)
    return sized, message


# --- the estimator's own error ---------------------------------------------------------


def record_prediction(
    *, session: Session, job_id: int, sized: Sized, backend: str, algorithm: str
) -> None:
    """Keep what was predicted for a GPU job, to compare once it has run."""
    session.add(
        MemoryPrediction(
            job_id=job_id,
            backend=backend,
            algorithm=algorithm,
            predicted_mb=sized.estimate.device_mb,
            breakdown=public_estimate(sized.estimate),
        )
    )
    session.flush()


def _gpu_name(session: Session, job_id: int) -> tuple[str | None, int | None]:
    """The model of the GPU the job's peak sample was on, and that peak."""
    from training_platform.monitoring.models import GpuSample

    sample = session.exec(
        select(GpuSample)
        .where(GpuSample.job_id == job_id)
        .order_by(col(GpuSample.memory_used_mb).desc())
        .limit(1)
    ).first()
    if sample is None:
        return None, None
    device = session.exec(
        select(GpuDevice)
        .join(Host, col(Host.id) == col(GpuDevice.host_id))
        .where(Host.name == sample.host, GpuDevice.index == sample.device_index)
    ).first()
    return (device.name if device else None), sample.memory_used_mb


def measure_finished(*, session: Session) -> int:
    """Fill in the measured peak of predictions whose job has finished; returns how many."""
    from training_platform.jobs.models import Job
    from training_platform.jobs.state import TERMINAL

    rows = session.exec(
        select(MemoryPrediction, Job)
        .join(Job, col(Job.id) == col(MemoryPrediction.job_id))
        .where(
            col(MemoryPrediction.measured_at).is_(None),
            col(Job.status).in_([s.value for s in TERMINAL]),
        )
    ).all()
    for prediction, _job in rows:
        name, peak = _gpu_name(session, prediction.job_id)
        prediction.gpu_name = name
        prediction.measured_mb = peak
        prediction.measured_at = utcnow()
        session.add(prediction)
    session.flush()
    return len(rows)


def error_pct(prediction: MemoryPrediction) -> float | None:
    """(predicted - measured) / measured, in percent."""
    if not prediction.measured_mb:
        return None
    return round(
        100 * (prediction.predicted_mb - prediction.measured_mb) / prediction.measured_mb, 1
    )


def error_bands(*, session: Session) -> list[dict[str, Any]]:
    """The estimator's error per (GPU model, backend, algorithm) over the measured jobs
    (read only: `measure_finished` fills in the ones that finished since)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in session.exec(
        select(MemoryPrediction).where(col(MemoryPrediction.measured_mb).is_not(None))
    ):
        error = error_pct(row)
        if error is not None and row.gpu_name:
            groups[(row.gpu_name, row.backend, row.algorithm)].append(error)
    return [
        {
            "gpu": gpu,
            "backend": backend,
            "algorithm": algorithm,
            "points": len(errors),
            "median_pct": round(statistics.median(errors), 1),
            "low_pct": min(errors),
            "high_pct": max(errors),
        }
        for (gpu, backend, algorithm), errors in sorted(groups.items())
    ]


def band_for(
    bands: Sequence[dict[str, Any]], gpu: str | None, backend: str, algorithm: str
) -> dict[str, Any] | None:
    """The band of this GPU model and pair, if any job measured one."""
    return next(
        (
            b
            for b in bands
            if b["gpu"] == gpu and b["backend"] == backend and b["algorithm"] == algorithm
        ),
        None,
    )


def prediction_of(*, session: Session, job_id: int) -> MemoryPrediction | None:
    """The job's prediction, measured if the job has finished."""
    measure_finished(session=session)
    return session.exec(select(MemoryPrediction).where(MemoryPrediction.job_id == job_id)).first()


def prediction_row(*, session: Session, job_id: int) -> MemoryPrediction | None:
    """The job's stored prediction as it is."""
    return session.exec(select(MemoryPrediction).where(MemoryPrediction.job_id == job_id)).first()


def how(estimate: dict[str, Any]) -> str:
    """A stored estimate in a few words: its phase and largest parts."""
    parts = sorted(estimate.get("breakdown_mb", {}).items(), key=lambda kv: -kv[1])[:3]
    listed = ", ".join(f"{name} {mb} MB" for name, mb in parts if mb)
    return f"{estimate.get('phase', '?')} peak: {listed}"


def size_job(*, session: Session, settings: Settings, job: Any) -> Sized | None:
    """Size a stored job from its spec (one submitted without a prediction)."""
    if job.model_id is None or int(job.spec.get("resources", {}).get("gpus", 0)) == 0:
        return None
    model = session.get(ModelEntry, job.model_id)
    if model is None:
        return None
    try:
        pair = get_backend(job.backend, job.algorithm)
        resources = job.spec.get("resources", {})
        parameters = validate_parameters(
            pair, job.spec.get("hyperparameters", {}), gpus=int(resources.get("gpus", 0))
        )
    except DomainError:
        return None
    return size(
        session=session,
        settings=settings,
        model=model,
        backend=job.backend,
        algorithm=job.algorithm,
        parameters=parameters,
        resources=resources,
        dataset_id=job.dataset_id,
        dataset_version=job.dataset_version,
    )


def prediction_count(*, session: Session) -> int:
    """How many GPU jobs were sized."""
    return int(session.exec(select(func.count()).select_from(MemoryPrediction)).one())


# --- advice ----------------------------------------------------------------------------

INFERENCE_TOKENS = 4096  # the KV cache advice counts: one sequence of this many tokens


def inference_bytes(arch: Architecture) -> int:
    """bf16 weights and one sequence's KV cache (vLLM's share needs at least this)."""
    kv = 2 * arch.layers * arch.kv_width * 2 * INFERENCE_TOKENS
    return 2 * arch.parameters + kv


def advice(*, session: Session, settings: Settings) -> list[dict[str, Any]]:
    """For each host's kind of GPU: which catalog models fit for inference, LoRA and full
    fine-tuning (TRL SFT, one row of 1,024 tokens per GPU, gradient checkpointing; full
    fine-tuning also sharded by FSDP over the host's GPUs of that kind)."""
    sized: list[tuple[ModelEntry, Architecture]] = []
    for model in catalog.list_models(session=session):
        try:
            sized.append((model, architecture_of(settings, model)))
        except (ArchitectureError, DomainError):
            continue
    kinds: dict[tuple[str, str, int], int] = defaultdict(int)
    for slot in scheduling.all_slots(session, include_occupied=True):
        if slot.kind == "gpu":
            kinds[(slot.host, slot.name, slot.memory_total_mb)] += 1
    out = []
    for (host, name, memory_mb), count in sorted(kinds.items()):
        models = []
        for model, arch in sized:
            full = estimate(arch, Workload(algorithm="sft", seq_len=1024))
            lora = estimate(
                arch, Workload(algorithm="sft", seq_len=1024, lora_rank=RECOMMENDED_LORA_RANK)
            )
            sharded = estimate(
                arch, Workload(algorithm="sft", backend="verl", seq_len=1024, gpus=count)
            )
            infer_mb = inference_bytes(arch) // 2**20 + 600
            models.append(
                {
                    "model": model.name,
                    "parameters": arch.parameters,
                    "inference": {"mb": infer_mb, "fits": infer_mb <= memory_mb},
                    "lora": {"mb": lora.device_mb, "fits": lora.device_mb <= memory_mb},
                    "full": {"mb": full.device_mb, "fits": full.device_mb <= memory_mb},
                    "full_sharded": {
                        "gpus": count,
                        "mb": sharded.device_mb,
                        "fits": sharded.device_mb <= memory_mb,
                    },
                }
            )
        out.append(
            {
                "host": host,
                "gpu": name,
                "memory_mb": memory_mb,
                "count": count,
                "models": models,
            }
        )
    return out
