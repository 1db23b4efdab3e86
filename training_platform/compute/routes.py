"""HTTP routes of the compute context: estimates, advice and the estimator's error."""

from __future__ import annotations

from typing import Any

from training_platform.api.deps import (
    CurrentToken,
    IdPath,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.backends.base import get_backend, validate_parameters
from training_platform.catalog import service as catalog
from training_platform.compute import service
from training_platform.compute.architecture import ArchitectureError
from training_platform.compute.schemas import (
    AccuracyPublic,
    EstimateCreate,
    EstimatePublic,
    GpuAdvice,
    PredictionPublic,
)
from training_platform.core.errors import NotFound
from training_platform.datasets import versions as dataset_versions
from training_platform.jobs import service as jobs_service

router = api_router(  # estimates change nothing
    "/compute",
    tags=["compute"],
    write="viewer",
    scoped=project_scoped("job_id", "job", jobs_service.project_of),
)


@router.post("/estimate")
def estimate_job(
    body: EstimateCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> EstimatePublic:
    """Peak memory per GPU of a job before it runs, the devices it may use, whether it fits,
    and configurations that fit (cheapest first); nothing is stored."""
    pair = get_backend(body.backend, body.algorithm)
    parameters = validate_parameters(pair, body.hyperparameters, gpus=body.resources.gpus)
    model = catalog.resolve_model(session=session, ref=body.model)
    resources = body.resources.model_dump()
    try:
        arch = service.architecture_of(settings, model)
    except ArchitectureError as error:
        return EstimatePublic(sized=False, reason=str(error))
    dataset_id = version = None
    if body.dataset is not None:
        entry, found = dataset_versions.resolve(session=session, ref=body.dataset)
        dataset_id, version = entry.id, found.number
    sized = service.size(
        session=session,
        settings=settings,
        model=model,
        backend=body.backend,
        algorithm=body.algorithm,
        parameters=parameters,
        resources=resources,
        dataset_id=dataset_id,
        dataset_version=version,
        arch=arch,
    )
    if sized is None:
        return EstimatePublic(
            sized=False,
            reason=f"{body.backend}/{body.algorithm} is not sized by the estimator",
            architecture=arch.describe(),
            parameters=arch.parameters,
        )
    options = service.options_for(sized, body.backend, body.algorithm, body.hyperparameters)
    bands = service.error_bands(session=session)
    band = service.band_for(
        bands, sized.devices.name if sized.devices else None, body.backend, body.algorithm
    )
    result: dict[str, Any] = {
        "sized": True,
        "architecture": arch.describe(),
        "parameters": arch.parameters,
        "estimate": service.public_estimate(sized.estimate),
        "devices": sized.devices.__dict__ if sized.devices else None,
        "fits": sized.fits,
        "headroom_mb": sized.headroom_mb(),
        "error_band": band,
        "recommendations": [service.public_option(o) for o in options],
    }
    return EstimatePublic.model_validate(result)


@router.get("/advice")
def advice(session: SessionDep, settings: SettingsDep, _: CurrentToken) -> list[GpuAdvice]:
    """For each host's kind of GPU: which catalog models fit for inference, LoRA and full
    fine-tuning (one row of 1,024 tokens per GPU, gradient checkpointing)."""
    return [GpuAdvice.model_validate(a) for a in service.advice(session=session, settings=settings)]


@router.get("/accuracy")
def accuracy(session: SessionDep, _: CurrentToken) -> AccuracyPublic:
    """The estimator's error per (GPU model, backend, algorithm) over finished GPU jobs."""
    service.measure_finished(session=session)
    bands = service.error_bands(session=session)
    session.commit()
    return AccuracyPublic.model_validate(
        {"bands": bands, "predictions": service.prediction_count(session=session)}
    )


@router.get("/predictions/{job_id}")
def prediction(job_id: IdPath, session: SessionDep, _: CurrentToken) -> PredictionPublic:
    """A GPU job's predicted peak memory per GPU, and the measured peak once it has run."""
    row = service.prediction_of(session=session, job_id=job_id)
    session.commit()
    if row is None:
        raise NotFound(f"job {job_id} has no memory prediction (not a sized GPU job)")
    return PredictionPublic(
        job_id=row.job_id,
        backend=row.backend,
        algorithm=row.algorithm,
        predicted_mb=row.predicted_mb,
        measured_mb=row.measured_mb,
        error_pct=service.error_pct(row),
        gpu_name=row.gpu_name,
        estimate=row.breakdown,
    )
