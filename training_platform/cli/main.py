"""`tp`: run the platform and its jobs from the terminal.

This module holds the app, the commands on the platform itself (up, down, status, gpus,
backends) and the registration of every command group, each in a module of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from training_platform.cli.client import ApiClient, ApiError
from training_platform.cli.common import (
    Column,
    Output,
    OutputOption,
    call,
    client,
    console,
    emit,
    err,
    fail,
    print_table,
    settings_or_exit,
)
from training_platform.cli.compute import compute_app
from training_platform.cli.datasets import datasets_app
from training_platform.cli.evaluation import eval_app
from training_platform.cli.hosts import hosts_app, secrets_app
from training_platform.cli.jobs import jobs_app
from training_platform.cli.models import models_app, rewards_app
from training_platform.cli.monitoring import alerts_app, webhooks_app
from training_platform.cli.pipelines import pipelines_app
from training_platform.cli.projects import projects_app
from training_platform.cli.serving import endpoints_app, serve_app
from training_platform.cli.surgery import merge_app
from training_platform.cli.users import audit, login, logout, tokens_app, users_app, whoami
from training_platform.core.settings import Settings

if TYPE_CHECKING:
    from training_platform.cli.services import ServiceStatus

app = typer.Typer(
    help="training_platform: post-train LLMs with verl and TRL.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
app.add_typer(rewards_app, name="rewards")
app.add_typer(eval_app, name="eval")
app.add_typer(serve_app, name="serve")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(merge_app, name="merge")
app.add_typer(projects_app, name="projects")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.command("login")(login)
app.command("logout")(logout)
app.command("whoami")(whoami)
app.command("audit")(audit)
app.add_typer(compute_app, name="compute")
app.add_typer(hosts_app, name="hosts")
app.add_typer(secrets_app, name="secrets")
app.add_typer(alerts_app, name="alerts")
app.add_typer(webhooks_app, name="webhooks")

# --- platform ------------------------------------------------------------------------------


@app.command()
def up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service.")] = 180,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help=f"Also start a Ray head on loopback and register it as host {RAY_HOST!r}.",
        ),
    ] = False,
) -> None:
    """Start the whole platform (Redis if needed, API, workers, beat, Flower unless off)."""
    from training_platform.bootstrap import bootstrap
    from training_platform.cli import services

    settings = settings_or_exit()
    with console.status("preparing the database, token, bundled assets and GPU inventory"):
        engine = bootstrap(settings, build_model=True)
    gpu_count = _local_gpu_count(engine, settings)
    try:
        redis_url = services.ensure_redis(settings)
    except services.ServiceError as error:
        fail(str(error))
    started = []
    for spec in services.service_specs(settings, redis_url, gpu_count):
        if services.is_alive(services.read_state(settings, spec.name)):
            continue
        services.spawn(settings, spec)
        started.append(spec.name)
    with console.status(f"starting {', '.join(started) or 'nothing new'}"):
        ok = services.wait_for(
            lambda: all(s.healthy for s in services.health(settings)),
            timeout=timeout,
            interval=0.25,
        )
    statuses = services.health(settings)
    if not ok:
        _print_status(statuses)
        for status in statuses:
            if not status.healthy:
                log = settings.logs_dir / f"{status.name}.log"
                if log.exists():
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                    err.print(f"[bold]{log}[/bold]\n{tail}", highlight=False, markup=False)
        fail("not every service became healthy; see above (tp down stops what started)")
    if ray:
        _up_ray(settings)
    console.print(f"[green]training_platform is up[/green]: {settings.resolved_api_url}")
    console.print(f"  dashboard {settings.resolved_api_url}/ (log in with the token below)")
    console.print(f"  API docs  {settings.resolved_api_url}/docs")
    console.print(f"  token     {settings.admin_token_file}")
    if settings.flower:
        flower_file = settings.home / "flower-password"
        console.print(
            f"  Flower    http://127.0.0.1:{settings.flower_port} "
            f"(user {settings.flower_user}, password in {flower_file})"
        )
    console.print(
        "  try       tp jobs submit --name demo --algorithm sft --model tiny-qwen2 "
        "--dataset tiny-sft -p max_steps=40 -p learning_rate=1e-3 --watch"
    )


@app.command()
def down(
    jobs: Annotated[bool, typer.Option("--jobs", help="Also stop running trainings.")] = False,
) -> None:
    """Stop every service `tp up` started. Trainings keep running unless --jobs."""
    from training_platform.cli import services

    settings = settings_or_exit()
    if jobs:
        _stop_trainings(settings)
    # every service at once (each shuts down on its own), then the private Redis they use
    stopped = services.stop_many(
        settings, [name for name in reversed(services.START_ORDER) if name != services.REDIS]
    )
    stopped += services.stop_many(settings, [services.REDIS])
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if jobs:
        _kill_leftover_trainings(settings)
        if _down_ray(settings):
            console.print("stopped: the Ray head")
    else:
        left = _active_local_jobs(settings)
        if left:
            console.print(
                f"{len(left)} training(s) keep running and will be re-adopted by the next "
                "`tp up` (`tp down --jobs` stops them)"
            )


def _local_gpu_count(engine: Any, settings: Settings) -> int:
    from sqlmodel import Session, select

    from training_platform.scheduling.models import GpuDevice, Host

    with Session(engine) as session:
        host = session.exec(select(Host).where(Host.name == settings.node_name)).first()
        if host is None:
            return 0
        return len(session.exec(select(GpuDevice).where(GpuDevice.host_id == host.id)).all())


RAY_HOST = "ray-local"


def _ray_dir(settings: Settings) -> Path:
    return settings.home / "ray"


def _up_ray(settings: Settings) -> None:
    """Start the platform's Ray head (unless it runs) and register or update its host."""
    from training_platform.cli import services

    try:
        from training_platform.runners import ray_head
    except ImportError:
        fail("Ray is not installed in this environment (it comes with environments/gpu-verl.txt)")
    directory = _ray_dir(settings)
    state = ray_head.head_status(directory)
    if state.get("alive"):
        address = str(state["address"])
    else:
        with console.status("starting a Ray head on 127.0.0.1"):
            try:
                address = ray_head.start_head(
                    temp_dir=directory,
                    port=services.free_port(),
                    dashboard_port=services.free_port(),
                    num_cpus=max(settings.training_slots + 1, 2),
                )
            except RuntimeError as error:
                fail(f"the Ray head did not start: {error}")
    body = {"ray_address": address, "ray_token": ray_head.head_token(directory)}
    with client() as api:
        try:
            known = api.get(f"hosts/{RAY_HOST}")
        except ApiError as error:
            if error.status != 404:
                fail(error.message)
            known = None
        if known is None:
            registered = {"name": RAY_HOST, "runner": "ray", "cpu_slots": 1, **body}
            call(api.request, "POST", "/api/v1/hosts", json=registered)
        elif known["ray_address"] != address:
            call(api.request, "PATCH", f"/api/v1/hosts/{RAY_HOST}", json=body)
    console.print(f"  Ray       {address} (host {RAY_HOST}; jobs: --host {RAY_HOST})")


def _down_ray(settings: Settings) -> bool:
    try:
        from training_platform.runners import ray_head
    except ImportError:
        return False
    directory = _ray_dir(settings)
    if not ray_head.head_status(directory).get("alive"):
        return False
    ray_head.stop_head(directory)
    return True


def _active_local_jobs(settings: Settings) -> list[Any]:
    from sqlmodel import Session, col, select

    from training_platform.core.db import get_engine
    from training_platform.jobs.models import Job
    from training_platform.jobs.state import ACTIVE, HELD
    from training_platform.jobs.supervisor import watched

    try:
        with Session(get_engine(settings)) as session:
            found = session.exec(
                select(Job).where(col(Job.status).in_([s.value for s in ACTIVE | HELD]))
            ).all()
            return [job for job in found if watched(job)]  # suspended runs included
    except Exception:  # no database yet: nothing can be running
        return []


def _pipelines_of(settings: Settings, job_ids: list[int]) -> dict[int, int]:
    """job id -> the pipeline whose stage it runs, for those of job_ids that run one."""
    from sqlmodel import Session, col, select

    from training_platform.core.db import get_engine
    from training_platform.pipelines.models import PipelineStage

    with Session(get_engine(settings)) as session:
        rows = session.exec(
            select(PipelineStage.job_id, PipelineStage.pipeline_id).where(
                col(PipelineStage.job_id).in_(job_ids)
            )
        ).all()
    return {int(job_id): pipeline_id for job_id, pipeline_id in rows if job_id is not None}


def _stop_trainings(settings: Settings) -> None:
    """Cancel what runs: a pipeline's stage as its pipeline (it ends cancelled, not with one
    stage failed), every other job as itself."""
    from training_platform.cli import services

    active = _active_local_jobs(settings)
    if not active:
        return
    pipeline_of = _pipelines_of(settings, [job.id for job in active])
    api = ApiClient.from_settings(settings)
    try:
        cancelled: set[int] = set()
        for pipeline_id in sorted(set(pipeline_of.values())):
            try:
                api.request("POST", f"/api/v1/pipelines/{pipeline_id}/cancel")
                cancelled.add(pipeline_id)
            except ApiError as error:
                err.print(f"pipeline {pipeline_id}: {error.message}")
        for job in active:
            if pipeline_of.get(job.id) in cancelled:
                continue
            try:
                api.job_action(job.id, "cancel")
            except ApiError as error:
                err.print(f"job {job.id}: {error.message}")
        services.wait_for(lambda: not _active_local_jobs(settings), timeout=60, interval=0.25)
    finally:
        api.close()


def _kill_leftover_trainings(settings: Settings) -> None:
    from training_platform.runners.local import LocalRunner

    runner = LocalRunner(node=settings.node_name)
    for job in _active_local_jobs(settings):
        if job.runner_handle and runner.owns(job.runner_handle):
            runner.cancel(job.runner_handle, force=True)
            console.print(f"killed the process group of job {job.id}")


def _print_status(statuses: list[ServiceStatus]) -> None:
    from training_platform.cli import services

    table = Table("service", "pid", "state", "detail")
    for status in statuses:
        if status.healthy and not status.running and status.name != services.REDIS:
            state = "[dim]off[/dim]"
        elif status.healthy:
            state = "[green]healthy[/green]"
        elif status.running:
            state = "[yellow]unhealthy[/yellow]"
        else:
            state = "[red]stopped[/red]"
        table.add_row(status.name, str(status.pid or "-"), state, status.detail)
    console.print(table)


@app.command()
def status() -> None:
    """Show each service and whether it is healthy (exit 1 if any is not)."""
    from training_platform.cli import services

    settings = settings_or_exit()
    statuses = services.health(settings)
    _print_status(statuses)
    active = _active_local_jobs(settings)
    console.print(f"trainings running: {len(active)}")
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


# --- GPUs and backends ---------------------------------------------------------------------


def _gb(mb: int) -> str:
    return f"{mb / 1024:.1f} GB"


@app.command()
def gpus(output: OutputOption = Output.table) -> None:
    """GPUs per host: memory, use and which job holds each (what fits them: tp compute advise)."""
    with client() as api:
        found = call(api.get, "gpus")
    emit(output, found, _print_gpus)


def _print_gpus(found: dict[str, Any]) -> None:
    for host in found["hosts"]:
        label = " [yellow](simulated)[/yellow]" if host["simulated"] else ""
        console.print(f"[bold]{host['name']}[/bold]{label}  source: {host['gpu_source']}")
        if not host["gpus"]:
            console.print("  no GPU found on this host; jobs run on its CPU training slots")
        else:
            table = Table(
                "gpu",
                "name",
                "memory used/total",
                "util",
                "state",
                "job",
            )
            for gpu in host["gpus"]:
                table.add_row(
                    str(gpu["index"]),
                    gpu["name"] + (" (simulated)" if gpu["simulated"] else ""),
                    f"{_gb(gpu['memory_used_mb'])} / {_gb(gpu['memory_total_mb'])}",
                    "-" if gpu["utilization_pct"] is None else f"{gpu['utilization_pct']}%",
                    gpu["state"],
                    str(gpu["held_by_job"] or "-"),
                )
            console.print(table)
        held = [str(c["held_by_job"]) for c in host["cpu_slots"] if c["held_by_job"]]
        console.print(
            f"  CPU training slots: {len(host['cpu_slots'])}, "
            f"held by job(s): {', '.join(held) or 'none'}"
        )


@app.command()
def backends(output: OutputOption = Output.table) -> None:
    """The (backend, algorithm) pairs, what they need, and their parameters."""
    with client() as api:
        found = call(api.get, "backends")
    emit(output, found, lambda found: print_table(BACKEND_COLUMNS, found))


BACKEND_COLUMNS = [
    Column("backend", lambda b: b["backend"]),
    Column("algorithm", lambda b: b["algorithm"]),
    Column("hosts", lambda b: b["hosts"], flex=True),
    Column("data", lambda b: b["data_task"] or "-"),
    Column("parameters", lambda b: ", ".join(b["parameters"].get("properties", {})), flex=True),
]
