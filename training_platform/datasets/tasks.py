"""Celery tasks of the datasets context. Thin: each calls the service."""

from __future__ import annotations

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.datasets import analyses, dedups
from training_platform.worker.app import app
from training_platform.worker.queues import PREPROCESSING


def send_analysis(analysis_id: int) -> None:
    """Have a general worker compute a pending analysis."""
    app.send_task(
        "tp.datasets.analyze", args=[analysis_id], queue=PREPROCESSING, routing_key=PREPROCESSING
    )


@app.task(name="tp.datasets.analyze")
def analyze(analysis_id: int) -> dict[str, object]:
    """Compute one pending analysis of a dataset version."""
    settings = get_settings()
    status = analyses.run(get_engine(settings), settings, analysis_id)
    return {"analysis": analysis_id, "status": status}


def send_dedup(dedup_id: int) -> None:
    """Have a general worker compute a pending dedup."""
    app.send_task(
        "tp.datasets.dedup", args=[dedup_id], queue=PREPROCESSING, routing_key=PREPROCESSING
    )


@app.task(name="tp.datasets.dedup")
def dedup(dedup_id: int) -> dict[str, object]:
    """Compute one pending dedup (its review) of a dataset version."""
    settings = get_settings()
    status = dedups.run(get_engine(settings), settings, dedup_id)
    return {"dedup": dedup_id, "status": status}
