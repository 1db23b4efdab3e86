"""Pipeline engine benchmark: submit cost, the cost of one engine pass, stage hand-off.

Runs the pipelines service and engine in this process on a private TP_HOME (SQLite by default,
or --database-url, e.g. a throwaway PostgreSQL database) with the bundled tiny model and data:

    python benchmarks/pipelines.py [--pipelines 200] [--database-url URL]

1. Submit: checking and storing a 4-stage diamond definition (graph, references, each stage
   against its backend and the catalog), per pipeline.
2. Engine pass: `advance_all` over N running pipelines whose stage jobs have not ended (what
   every beat tick pays), in total and per pipeline.
3. Hand-off: from a stage's job reaching `succeeded` to the next stage's job stored and its
   message handed to the queue, inside one engine pass. On a running platform the pass comes
   with the next beat tick, so add up to TP_SUPERVISOR_INTERVAL_S (2 s by default).

Messages go to a recorder, not to Redis: this measures the engine and the database only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from training_platform.assets import build_tiny_model
from training_platform.bootstrap import bootstrap
from training_platform.core.settings import load_settings
from training_platform.jobs.models import Job
from training_platform.jobs.state import JobStatus, transition
from training_platform.pipelines import engine as pipeline_engine
from training_platform.pipelines import service
from training_platform.pipelines.schemas import PipelineSubmit

SFT = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
DIAMOND = {
    "name": "bench",
    "stages": {
        "a": {"job": SFT},
        "b": {"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
        "c": {"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
        "d": {
            "depends_on": ["b", "c"],
            "evaluate": {"model": "${stages.b.outputs.checkpoint}", "dataset": "tiny-math-eval"},
        },
    },
}


class Recorder:
    """Stands in for the Celery dispatcher: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def dispatch(self, job: Job) -> None:
        self.sent += 1

    def request_cancel(self, job: Job) -> None:
        self.sent += 1

    def request_schedule(self) -> None:
        self.sent += 1


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print tables, then one RESULT {json} line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="tp-bench-pipelines-") as tmp:
        home = Path(tmp) / "home"
        model = home / "models" / "builtin" / "tiny-qwen2"
        build_tiny_model(model)
        settings = load_settings(home=home, database_url=args.database_url)
        engine = bootstrap(settings)
        recorder = Recorder()

        submits, ids = [], []
        request = PipelineSubmit.model_validate({"definition": DIAMOND})
        for _ in range(args.pipelines):
            started = time.perf_counter()
            with Session(engine, expire_on_commit=False) as session:
                pipeline, _ = service.submit(session=session, request=request, actor="bench")
                session.commit()
            submits.append(time.perf_counter() - started)
            assert pipeline.id is not None
            ids.append(pipeline.id)

        passes = []
        for _ in range(5):  # the first pass creates every first stage's job; later ones only look
            started = time.perf_counter()
            pipeline_engine.advance_all(engine, settings, recorder)
            passes.append(time.perf_counter() - started)

        handoffs = []
        for pipeline_id in ids[: min(50, len(ids))]:
            with Session(engine, expire_on_commit=False) as session:
                stage = service.stages_of(session=session, pipeline_id=pipeline_id)[0]
                job = session.get(Job, stage.job_id)
                assert job is not None
                for step in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
                    job = transition(session, job, step, actor="bench", reason="bench")
                directory = settings.runs_dir / str(job.id) / "attempt-1" / "model"
                directory.mkdir(parents=True)
                (directory / "config.json").write_text("{}")
                transition(
                    session,
                    job,
                    JobStatus.SUCCEEDED,
                    actor="bench",
                    reason="bench",
                    values={"exit_code": 0, "outputs": {"model": "model"}},
                )
                session.commit()
            before = recorder.sent
            started = time.perf_counter()
            pipeline_engine.advance(engine, settings, pipeline_id, recorder)
            handoffs.append(time.perf_counter() - started)
            assert recorder.sent == before + 2  # both branches started

    steady = passes[1:]
    result: dict[str, Any] = {
        "database": "postgresql" if args.database_url else "sqlite",
        "pipelines": args.pipelines,
        "submit": _ms(submits),
        "first_pass_s": round(passes[0], 3),
        "pass": {
            **_ms(steady),
            "per_pipeline_ms": round(statistics.median(steady) / args.pipelines * 1000, 3),
        },
        "handoff": _ms(handoffs),
    }
    table = Table(
        "measure", "median", "p95", title=f"{args.pipelines} pipelines on {result['database']}"
    )
    table.add_row(
        "submit (check + store)",
        f"{result['submit']['median_ms']} ms",
        f"{result['submit']['p95_ms']} ms",
    )
    table.add_row(
        f"engine pass, {args.pipelines} running",
        f"{result['pass']['median_ms']} ms",
        f"{result['pass']['p95_ms']} ms",
    )
    table.add_row("  per pipeline", f"{result['pass']['per_pipeline_ms']} ms", "")
    table.add_row(
        "hand-off (job succeeded -> 2 next jobs)",
        f"{result['handoff']['median_ms']} ms",
        f"{result['handoff']['p95_ms']} ms",
    )
    console.print(table)
    console.print(f"first pass (creates {args.pipelines} jobs): {result['first_pass_s']} s")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
