"""`tp jobs`: submit a training job, list, show, follow (logs, watch), pause, resume, retry,
cancel and delete it, its launch plan and its lineage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from training_platform.cli.client import ApiClient, read_token
from training_platform.cli.common import (
    STATUS_STYLE,
    Column,
    Output,
    OutputOption,
    WideOption,
    act,
    call,
    client,
    console,
    emit,
    err,
    fail,
    load_data_file,
    parse_param,
    print_json,
    print_table,
    settings_or_exit,
    time_column,
)

jobs_app = typer.Typer(help="Submit and follow training jobs.", no_args_is_help=True)

TERMINAL = {"succeeded", "failed", "cancelled"}


def load_spec_file(path: Path) -> dict[str, Any]:
    """A job spec from a JSON or YAML file."""
    data = load_data_file(path)
    if not isinstance(data, dict):
        fail(f"{path}: a job spec must be a mapping", 2)
    return data


@jobs_app.command("submit")
def jobs_submit(
    name: Annotated[str | None, typer.Option(help="Job name (any text).")] = None,
    algorithm: Annotated[str | None, typer.Option(help="sft, ppo, grpo, dpo, gspo.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or id.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name or id.")] = None,
    backend: Annotated[str | None, typer.Option(help="trl or verl.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyperparameter key=value.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="0-9, higher first.")] = None,
    project: Annotated[
        str | None, typer.Option(help="Whose GPU quota it uses (default: default).")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs on one host (0: CPU).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Run on this host (this node or a registered one).")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Retry failed attempts automatically, up to this many.")
    ] = None,
    max_runtime_s: Annotated[
        float | None, typer.Option(help="Stop an attempt after this many seconds.")
    ] = None,
    stall_timeout_s: Annotated[
        float | None, typer.Option(help="Flag the job stalled after this long without output.")
    ] = None,
    on_stall: Annotated[str | None, typer.Option(help="keep, retry or fail.")] = None,
    file: Annotated[Path | None, typer.Option(help="JSON/YAML spec; flags override it.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Never create two jobs.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Show the launch plan only.")] = False,
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Submit a training job."""
    spec: dict[str, Any] = load_spec_file(file) if file else {}
    for key, value in (
        ("name", name),
        ("algorithm", algorithm),
        ("model", model),
        ("dataset", dataset),
        ("backend", backend),
        ("priority", priority),
        ("project", project),
    ):
        if value is not None:
            spec[key] = value
    if gpus is not None:
        spec["resources"] = {**dict(spec.get("resources") or {}), "gpus": gpus}
    if host is not None:
        spec["resources"] = {**dict(spec.get("resources") or {}), "host": host}
    policy = {
        key: value
        for key, value in (
            ("max_attempts", max_attempts),
            ("max_runtime_s", max_runtime_s),
            ("stall_timeout_s", stall_timeout_s),
            ("on_stall", on_stall),
        )
        if value is not None
    }
    if policy:
        spec["policy"] = {**dict(spec.get("policy") or {}), **policy}
    hyper = dict(spec.get("hyperparameters") or {})
    for item in param or []:
        key, value = parse_param(item)
        hyper[key] = value
    spec["hyperparameters"] = hyper
    missing = [k for k in ("name", "algorithm", "model", "dataset") if k not in spec]
    if missing:
        fail(f"missing {', '.join('--' + m for m in missing)}", 2)
    with client() as api:
        if dry_run:
            emit(output, call(api.plan_request, spec), _print_plan)
            return
        job = call(api.submit_job, spec, idempotency_key)
        if output is Output.json:
            print_json(job)
        else:
            console.print(f"job {job['id']} {job['status']}: {job['name']}", highlight=False)
        if watch:
            _watch(api, job["id"])


def _print_plan(plan: dict[str, Any]) -> None:
    console.print(f"[bold]{plan['backend']}/{plan['algorithm']}[/bold] in {plan['run_dir']}")
    console.print("argv:", highlight=False)
    for arg in plan["argv"]:
        console.print(f"  {arg}", highlight=False, markup=False)
    console.print("env:", highlight=False)
    for key, value in sorted(plan["env"].items()):
        console.print(f"  {key}={value}", highlight=False, markup=False)
    for path, content in plan["files"].items():
        console.print(f"file {path}:", highlight=False)
        console.print(content, highlight=False, markup=False)


def _step(job: dict[str, Any]) -> str:
    progress = job["progress"]
    if progress["step"] is None:
        return "-"
    return f"{progress['step']}/{progress['total']}" if progress["total"] else str(progress["step"])


# In 80 columns: id, name, algorithm, model, status, step and when (no priority, no dataset).
JOB_COLUMNS = [
    Column("id", lambda j: str(j["id"]), justify="right"),
    Column("name", lambda j: j["name"], flex=True),
    Column(
        "algorithm",
        lambda j: f"{j['backend']}/{j['algorithm']}",
        drop=3,
        short=("algo", lambda j: j["algorithm"]),
    ),
    Column("model", lambda j: j["model"], drop=1, flex=True),
    Column("dataset", lambda j: j["dataset"], drop=4, flex=True),
    Column("prio", lambda j: str(j["priority"]), drop=5, justify="right"),
    Column("status", lambda j: j["status"], style=lambda j: STATUS_STYLE.get(j["status"], "")),
    Column("step", _step, justify="right"),
    time_column("created", "created_at", drop=2),
]


@jobs_app.command("list")
def jobs_list(
    status_filter: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only these statuses.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """List jobs, newest first (the columns that fit the terminal; --wide: all of them)."""
    with client() as api:
        page = call(api.list_jobs, status_filter or [], limit)

    def show(page: dict[str, Any]) -> None:
        print_table(JOB_COLUMNS, page["items"], wide=wide)
        console.print(f"{len(page['items'])} of {page['total']} jobs")

    emit(output, page, show)


EVENT_COLUMNS = [
    time_column("time", "created_at", drop=1),
    Column("attempt", lambda e: str(e["attempt"]), drop=3, justify="right"),
    Column("from", lambda e: e["from_status"] or "-"),
    Column("to", lambda e: e["to_status"]),
    Column("actor", lambda e: e["actor"], drop=2),
    Column("reason", lambda e: e["reason"], flex=True),
]


def _rough(seconds: float) -> str:
    """A wait as people say it: 40 s, 7 min, 2.5 h (rounded up, never to 0 min)."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{-(-seconds // 60):.0f} min"
    return f"{seconds / 3600:.1f} h"


@jobs_app.command("show")
def jobs_show(job_id: int, output: OutputOption = Output.table) -> None:
    """Show a job with its events (as JSON: {"job": ..., "events": [...]})."""
    with client() as api:
        job = call(api.job, job_id)
        events = call(api.job_part, job_id, "events")
    emit(output, {"job": job, "events": events}, _print_job)


def _print_job(found: dict[str, Any]) -> None:
    job, events = found["job"], found["events"]
    for key in (
        "id",
        "name",
        "status",
        "attempt",
        "backend",
        "algorithm",
        "model",
        "dataset",
        "priority",
        "exit_code",
        "end_cause",
        "retry_at",
        "created_at",
        "started_at",
        "finished_at",
    ):
        console.print(f"{key:>12}: {job[key]}", highlight=False, markup=False)
    console.print(f"{'progress':>12}: {_step(job)}")
    if job.get("devices"):
        console.print(f"{'devices':>12}: {', '.join(job['devices'])}", highlight=False)
    if job.get("wait_reason"):
        wait = job.get("estimated_wait_s")
        estimate = f", about {_rough(wait)} more" if wait is not None else ", wait unknown"
        console.print(
            f"{'queue':>12}: position {job['queue_position']}{estimate}; {job['wait_reason']}",
            highlight=False,
            markup=False,
        )
    if job.get("outputs"):
        console.print(f"{'outputs':>12}: {json.dumps(job['outputs'])}", markup=False)
    if job.get("error"):
        console.print(f"{'error':>12}:", highlight=False)
        console.print(job["error"], highlight=False, markup=False)
    print_table(EVENT_COLUMNS, events)
    for event in events:
        if event.get("detail"):
            stamp = event["created_at"][:19].replace("T", " ")
            console.print(f"[bold]{stamp} {event['to_status']}: detail[/bold]")
            console.print(event["detail"], highlight=False, markup=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    attempt: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Print a job's log (the current attempt unless --attempt)."""
    offset = 0
    with client() as api:
        while True:
            part = call(api.logs, job_id, offset, attempt)
            sys.stdout.write(part["text"])
            sys.stdout.flush()
            offset = part["next_offset"]
            if part["complete"] or not follow:
                return
            if not part["text"]:
                time.sleep(1)


def _watch(api: ApiClient, job_id: int, *, logs: bool = False) -> None:
    """Follow a job over its WebSocket: progress and latest loss, live (its log too, with
    `logs`).

    The socket is reopened (from the last step seen) when the API restarts or the network
    drops, so nothing shown is missed or repeated.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    token = read_token(settings_or_exit())
    url = f"{api.base_url.replace('http', 'ws', 1)}/api/v1/ws/jobs/{job_id}"
    last_step: int | None = None
    loss: float | None = None
    job: dict[str, Any] = {"status": "?", "error": None}
    columns = (
        TextColumn("[bold]job {task.fields[job]}[/bold] {task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    failures = 0
    shown = [0, 0]  # (attempt, log offset) printed so far
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=None, job=job_id, status="...", loss="-", steps="")
        reached = 0  # a resumed attempt reports no step until its first: it stays here

        def show(state: dict[str, Any]) -> None:
            nonlocal reached
            job.update(state)
            reached = state.get("progress_step") or reached
            total = state.get("progress_total")
            bar.update(
                task,
                total=total,
                completed=reached,
                status=state["status"],
                loss=f"{loss:.4f}" if loss is not None else "-",
                steps=f"step {reached}/{total}" if total else f"step {reached}" if reached else "",
            )

        while job["status"] not in TERMINAL:
            try:
                with connect(url, open_timeout=10) as ws:
                    ws.send(json.dumps({"type": "hello", "token": token, "last_step": last_step}))
                    failures = 0
                    while job["status"] not in TERMINAL:
                        message = json.loads(ws.recv())
                        kind = message["type"]
                        if kind == "error":
                            fail(message["message"])
                        points = [
                            {"step": step, "key": key, "value": value}
                            for key, pairs in message.get("series", {}).items()
                            for step, value in pairs
                        ] + message.get("points", [])
                        for point in points:
                            last_step = max(last_step or 0, point["step"])
                            if point["key"] == "loss" and point["value"] is not None:
                                loss = point["value"]
                        if kind == "snapshot":
                            tail = message["log_tail"].encode()
                            start = message["log_offset"] - len(tail)
                            if shown[0] == message["log_attempt"] and shown[1] >= start:
                                tail = tail[shown[1] - start :]  # seen before the reconnect
                            shown[:] = [message["log_attempt"], message["log_offset"]]
                            if tail and logs:
                                text = tail.decode(errors="replace").rstrip("\n")
                                bar.console.print(text, markup=False)
                        elif kind == "log":
                            shown[:] = [
                                message["attempt"],
                                message["offset"] + len(message["text"].encode()),
                            ]
                            if logs:
                                bar.console.print(message["text"].rstrip("\n"), markup=False)
                        elif kind == "alert":
                            alert = message["alert"]
                            bar.console.print(
                                f"[red]alert:[/red] {alert['message']} ({alert['action_result']})"
                            )
                        if kind in ("snapshot", "status"):
                            show(message["job"])
                        elif kind == "metrics":
                            show(job)
            except InvalidStatus as error:
                code = error.response.status_code
                if code in (401, 403, 404):
                    fail(f"the API refused to stream job {job_id} (HTTP {code})")
                failures += 1
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                failures += 1
            if job["status"] not in TERMINAL:
                if failures > 60:
                    fail(f"lost the connection to {api.base_url} for a minute")
                time.sleep(1)
    style = STATUS_STYLE.get(job["status"], "")
    console.print(f"job {job_id} [{style}]{job['status']}[/{style}]")
    if job["status"] != "succeeded":
        if job.get("error"):
            err.print(job["error"], highlight=False, markup=False)
        raise typer.Exit(1)


@jobs_app.command("watch")
def jobs_watch(
    job_id: int,
    log: Annotated[
        bool, typer.Option("--log", help="Print the job's log as it grows too.")
    ] = False,
) -> None:
    """Follow a job with a progress bar and its latest loss; exit 1 unless it succeeds."""
    with client() as api:
        _watch(api, job_id, logs=log)


def _attempt(job: dict[str, Any], resumed: str) -> str:
    """`job N STATUS (attempt A, from step S)`: what a resume or a retry started."""
    resume = (job.get("inputs") or {}).get("resume_from")
    where = f", {resumed} step {resume['step']}" if resume else ""
    return f"job {job['id']} {job['status']} (attempt {job['attempt']}{where})"


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, output: OutputOption = Output.table) -> None:
    """Cancel a job (stops its whole process group)."""
    act("POST", f"jobs/{job_id}/cancel", lambda job: f"job {job_id} {job['status']}", output)


@jobs_app.command("pause")
def jobs_pause(
    job_id: int,
    suspend: Annotated[
        bool,
        typer.Option(
            "--suspend",
            help="Stop the process group in place (keeps its devices) instead of "
            "checkpointing and exiting.",
        ),
    ] = False,
    output: OutputOption = Output.table,
) -> None:
    """Pause a running job: it saves a checkpoint and stops (or, with --suspend, is frozen)."""
    act(
        "POST",
        f"jobs/{job_id}/pause",
        lambda job: f"job {job_id} {job['status']}",
        output,
        json={"mode": "suspend" if suspend else "checkpoint"},
    )


@jobs_app.command("resume")
def jobs_resume(job_id: int, output: OutputOption = Output.table) -> None:
    """Resume a paused job from its checkpoint (or continue a suspended one)."""
    act("POST", f"jobs/{job_id}/resume", lambda job: _attempt(job, "from"), output)


@jobs_app.command("retry")
def jobs_retry(
    job_id: int,
    from_checkpoint: Annotated[
        bool, typer.Option("--from-checkpoint", help="Resume from the last checkpoint.")
    ] = False,
    output: OutputOption = Output.table,
) -> None:
    """Start a new attempt of a failed or cancelled job (from scratch, or from a checkpoint)."""
    params = {"from_checkpoint": "true"} if from_checkpoint else {}
    act(
        "POST",
        f"jobs/{job_id}/retry",
        lambda job: _attempt(job, "resuming from"),
        output,
        params=params,
    )


@jobs_app.command("delete")
def jobs_delete(job_id: int) -> None:
    """Delete a finished job and its files."""
    act("DELETE", f"jobs/{job_id}", lambda _: f"job {job_id} deleted")


@jobs_app.command("plan")
def jobs_plan(job_id: int, output: OutputOption = Output.table) -> None:
    """Show the launch plan of a job (argv, env, files)."""
    with client() as api:
        plan = call(api.job_part, job_id, "plan")
    emit(output, plan, _print_plan)


@jobs_app.command("lineage")
def jobs_lineage(job_id: int, output: OutputOption = Output.table) -> None:
    """Where a job's model and data came from, and what it produced."""
    with client() as api:
        found = call(api.job_part, job_id, "lineage")
    emit(output, found, _print_lineage)


def _print_lineage(found: dict[str, Any]) -> None:
    job, model, dataset = found["job"], found["model"], found["dataset"]
    line = f"job {job['id']} {job['name']} ({job['backend']}/{job['algorithm']}, {job['status']})"
    console.print(line, highlight=False, markup=False)
    if found["pipeline"]:
        pipe = found["pipeline"]
        console.print(
            f"  ran stage {pipe['stage']} (run {pipe['run']}) of pipeline {pipe['id']} "
            f"{pipe['name']}",
            highlight=False,
            markup=False,
        )
    origin = model.get("produced_by")
    made = ""
    if origin:
        made = f", produced by job {origin['job_id']}"
        if origin.get("stage"):
            made += f" (stage {origin['stage']} of pipeline {origin['pipeline_id']})"
    console.print(
        f"  model    {model['name']} [{model['source']}]{made}", highlight=False, markup=False
    )
    prepared = dataset.get("prepared") or {}
    version = f"sha256 {str(dataset['sha256'])[:12]}, {dataset['rows']} rows"
    if prepared:
        version += (
            f"; prepared for {prepared.get('task')}: sha256 {str(prepared.get('sha256'))[:12]}"
        )
    console.print(f"  dataset  {dataset['name']} ({version})", highlight=False, markup=False)
    if found["resumed_from"]:
        console.print(f"  resumed  from step {found['resumed_from']['step']}", highlight=False)
    for artifact in found["artifacts"]:
        name = f" -> model {artifact['registered_as']}" if artifact["registered_as"] else ""
        console.print(
            f"  wrote    {artifact['kind']} {artifact['path']} (step {artifact['step']}){name}",
            highlight=False,
            markup=False,
        )
    for consumer in found["consumers"]:
        console.print(
            f"  used by  job {consumer['job_id']} {consumer['name']}", highlight=False, markup=False
        )
