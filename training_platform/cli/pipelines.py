"""`tp pipelines`: submit a multi-stage pipeline (a file or a shipped template), list, show,
watch, cancel, pause, resume and retry it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from training_platform.cli.client import ApiClient
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
    parse_param,
    print_json,
    print_table,
    time_column,
)

pipelines_app = typer.Typer(
    help="Multi-stage pipelines (SFT -> RL -> evaluate) run as one DAG.", no_args_is_help=True
)

PIPELINE_TERMINAL = {"succeeded", "failed", "cancelled"}


def _pipeline_body(
    file: Path | None,
    template: str | None,
    params: list[str],
    name: str | None,
    priority: int | None,
) -> dict[str, Any]:
    if (file is None) == (template is None):
        fail("give a definition FILE or --template NAME (see tp pipelines templates)", 2)
    body: dict[str, Any] = {}
    if template is not None:
        body["template"] = template
    else:
        assert file is not None
        try:
            text = file.read_text()
        except OSError as error:
            fail(f"{file}: {error.strerror or error}", 2)
        if file.suffix in (".yaml", ".yml"):
            body["yaml"] = text
        else:
            try:
                body["definition"] = json.loads(text)
            except ValueError as error:
                fail(f"{file}: not valid JSON: {error}", 2)
    body["parameters"] = dict(parse_param(item) for item in params)
    if name is not None:
        body["name"] = name
    if priority is not None:
        body["priority"] = priority
    return body


@pipelines_app.command("submit")
def pipelines_submit(
    file: Annotated[Path | None, typer.Argument(help="Definition, YAML or JSON.")] = None,
    template: Annotated[str | None, typer.Option(help="Run a shipped template.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter key=value.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Pipeline name (overrides the file's).")] = None,
    priority: Annotated[int | None, typer.Option(help="0-9, higher first; every stage.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Never create two.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only check the definition.")] = False,
    watch: Annotated[bool, typer.Option(help="Follow the pipeline until it ends.")] = False,
    output: OutputOption = Output.table,
    project: Annotated[
        str | None, typer.Option(help="The project it belongs to (default: default).")
    ] = None,
) -> None:
    """Submit a pipeline from a definition file or a template."""
    body = _pipeline_body(file, template, param or [], name, priority)
    if project is not None and not dry_run:
        body["project"] = project
    with client() as api:
        if dry_run:
            emit(
                output,
                call(api.validate_pipeline, body),
                lambda checked: console.print(
                    f"valid: {checked['name']}, stages in order: {', '.join(checked['order'])}",
                    highlight=False,
                    markup=False,
                ),
            )
            return
        pipeline = call(api.submit_pipeline, body, idempotency_key)
        emit(
            output,
            pipeline,
            lambda made: console.print(
                f"pipeline {made['id']} {made['status']}: {made['name']}", highlight=False
            ),
        )
        if watch:
            _watch_pipeline(api, pipeline["id"])


PIPELINE_COLUMNS = [
    Column("id", lambda p: str(p["id"]), justify="right"),
    Column("name", lambda p: p["name"], flex=True),
    Column("status", lambda p: p["status"], style=lambda p: STATUS_STYLE.get(p["status"], "")),
    Column(
        "stages",
        lambda p: ", ".join(f"{n} {s}" for s, n in sorted(p["stages"].items())),
        flex=True,
    ),
    time_column("created", "created_at", drop=1),
]


@pipelines_app.command("list")
def pipelines_list(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """List pipelines, newest first."""
    params: list[tuple[str, str | int]] = [("limit", limit), *(("status", s) for s in status or [])]
    with client() as api:
        page = call(api.request, "GET", "/api/v1/pipelines", params=params)

    def show(page: dict[str, Any]) -> None:
        print_table(PIPELINE_COLUMNS, page["items"], wide=wide)
        console.print(f"{len(page['items'])} of {page['total']}")

    emit(output, page, show)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def _metric(stage: dict[str, Any]) -> str:
    metric = stage.get("key_metric")
    if metric and metric["value"] is not None:
        return f"{metric['name']} {metric['value']:.4g}"
    return "-"


def _note(stage: dict[str, Any]) -> str:
    if stage["status"] == "succeeded" and (stage.get("outputs") or {}).get("checkpoint"):
        return f"model {stage['outputs']['checkpoint']}"
    return str(stage.get("reason") or "")


STAGE_COLUMNS = [
    Column(
        "stage", lambda s: s["name"] + (f" (run {s['run']})" if s["run"] > 1 else ""), flex=True
    ),
    Column("after", lambda s: ", ".join(s["depends_on"]) or "-", drop=3, flex=True),
    Column("status", lambda s: s["status"], style=lambda s: STATUS_STYLE.get(s["status"], "")),
    Column(
        "job",
        lambda s: f"{s['job_id']} {s['job_status']}" if s["job_id"] else "-",
        short=("job", lambda s: str(s["job_id"] or "-")),
        drop=1,
    ),
    Column("time", lambda s: _duration(s["duration_s"]), drop=2, justify="right"),
    Column("key metric", _metric, flex=True),
    Column("note", _note, flex=True),
]


def _print_pipeline(pipeline: dict[str, Any]) -> None:
    style = STATUS_STYLE.get(pipeline["status"], "")
    console.print(
        f"pipeline {pipeline['id']} {pipeline['name']}: [{style}]{pipeline['status']}[/{style}]"
        f" ({_duration(pipeline['duration_s'])}, priority {pipeline['priority']})",
        highlight=False,
    )
    print_table(STAGE_COLUMNS, pipeline["stages"])
    if pipeline.get("error"):
        err.print(pipeline["error"], highlight=False, markup=False)


@pipelines_app.command("show")
def pipelines_show(pipeline_id: int, output: OutputOption = Output.table) -> None:
    """Show a pipeline: each stage with what it waits for, its state, job, time and metric
    (as JSON: {"pipeline": ..., "events": [...]})."""
    with client() as api:
        pipeline = call(api.get, f"pipelines/{pipeline_id}")
        if output is Output.json:
            events = call(api.get, f"pipelines/{pipeline_id}/events")
            print_json({"pipeline": pipeline, "events": events})
            return
    _print_pipeline(pipeline)


def _watch_pipeline(api: ApiClient, pipeline_id: int) -> None:
    seen: dict[str, str] = {}
    while True:
        pipeline = call(api.get, f"pipelines/{pipeline_id}")
        for stage in pipeline["stages"]:
            state = f"{stage['status']}/{stage['job_status']}"
            if seen.get(stage["name"]) != state:
                seen[stage["name"]] = state
                job = f" (job {stage['job_id']} {stage['job_status']})" if stage["job_id"] else ""
                console.print(f"  {stage['name']}: {stage['status']}{job}", highlight=False)
        if pipeline["status"] in PIPELINE_TERMINAL:
            break
        time.sleep(2)
    _print_pipeline(pipeline)
    if pipeline["status"] != "succeeded":
        raise typer.Exit(1)


@pipelines_app.command("watch")
def pipelines_watch(pipeline_id: int) -> None:
    """Follow a pipeline until it ends; exit 1 unless it succeeds."""
    with client() as api:
        _watch_pipeline(api, pipeline_id)


def _pipeline_state(pipeline: dict[str, Any]) -> str:
    return f"pipeline {pipeline['id']} {pipeline['status']}"


@pipelines_app.command("cancel")
def pipelines_cancel(pipeline_id: int, output: OutputOption = Output.table) -> None:
    """Cancel a pipeline: pending stages are dropped, running stage jobs stopped."""
    act("POST", f"pipelines/{pipeline_id}/cancel", _pipeline_state, output)


@pipelines_app.command("pause")
def pipelines_pause(pipeline_id: int, output: OutputOption = Output.table) -> None:
    """Pause a pipeline: no stage starts; running stage jobs checkpoint and stop."""
    act("POST", f"pipelines/{pipeline_id}/pause", _pipeline_state, output)


@pipelines_app.command("resume")
def pipelines_resume(pipeline_id: int, output: OutputOption = Output.table) -> None:
    """Resume a paused pipeline."""
    act("POST", f"pipelines/{pipeline_id}/resume", _pipeline_state, output)


def _rerunning(pipeline: dict[str, Any]) -> str:
    rerun = [s["name"] for s in pipeline["stages"] if s["status"] in ("pending", "running")]
    return f"{_pipeline_state(pipeline)}; rerunning {', '.join(rerun)}"


@pipelines_app.command("retry")
def pipelines_retry(
    pipeline_id: int,
    from_stage: Annotated[
        str | None, typer.Option(help="Rerun this stage and what follows it.")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Follow the pipeline until it ends.")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Retry a failed or cancelled pipeline; succeeded stages upstream are reused."""
    body = {"from_stage": from_stage}
    act("POST", f"pipelines/{pipeline_id}/retry", _rerunning, output, json=body)
    if watch:
        with client() as api:
            _watch_pipeline(api, pipeline_id)


@pipelines_app.command("templates")
def pipelines_templates(
    name: Annotated[str | None, typer.Argument(help="Print this template's YAML.")] = None,
    output: OutputOption = Output.table,
) -> None:
    """List the shipped templates, or print one (save it, edit it, submit it)."""
    with client() as api:
        if name is not None:
            template = call(api.get, f"pipelines/templates/{name}")
            emit(output, template, lambda found: sys.stdout.write(found["yaml"]))
            return
        found = call(api.get, "pipelines/templates")
    emit(output, found, lambda found: print_table(TEMPLATE_COLUMNS, found))


def _template_stages(template: dict[str, Any]) -> str:
    order = [f"{s} (after {', '.join(d)})" if d else s for s, d in template["stages"].items()]
    return ", ".join(order)


TEMPLATE_COLUMNS = [
    Column("name", lambda t: t["name"]),
    Column("stages", _template_stages, flex=True),
    Column("description", lambda t: t["description"], flex=True),
]
