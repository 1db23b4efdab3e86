"""`tp pipelines`: submit a multi-stage pipeline (a file or a shipped template), list, show,
watch, cancel, pause, resume and retry it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from training_platform.cli.client import ApiClient
from training_platform.cli.common import STATUS_STYLE, call, client, console, err, fail, parse_param

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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
            checked = call(api.validate_pipeline, body)
            if as_json:
                console.print_json(data=checked)
            else:
                console.print(
                    f"valid: {checked['name']}, stages in order: {', '.join(checked['order'])}",
                    highlight=False,
                    markup=False,
                )
            return
        pipeline = call(api.submit_pipeline, body, idempotency_key)
        if as_json:
            console.print_json(data=pipeline)
        else:
            console.print(
                f"pipeline {pipeline['id']} {pipeline['status']}: {pipeline['name']}",
                highlight=False,
            )
        if watch:
            _watch_pipeline(api, pipeline["id"])


@pipelines_app.command("list")
def pipelines_list(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List pipelines, newest first."""
    params: list[tuple[str, str | int]] = [("limit", limit), *(("status", s) for s in status or [])]
    with client() as api:
        page = call(api.request, "GET", "/api/v1/pipelines", params=params)
    if as_json:
        console.print_json(data=page)
        return
    table = Table("id", "name", "status", "stages", "created")
    for item in page["items"]:
        style = STATUS_STYLE.get(item["status"], "")
        counts = ", ".join(f"{n} {s}" for s, n in sorted(item["stages"].items()))
        table.add_row(
            str(item["id"]),
            item["name"],
            f"[{style}]{item['status']}[/{style}]" if style else item["status"],
            counts,
            item["created_at"][:19].replace("T", " "),
        )
    console.print(table)
    console.print(f"{len(page['items'])} of {page['total']}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def _print_pipeline(pipeline: dict[str, Any]) -> None:
    style = STATUS_STYLE.get(pipeline["status"], "")
    console.print(
        f"pipeline {pipeline['id']} {pipeline['name']}: [{style}]{pipeline['status']}[/{style}]"
        f" ({_duration(pipeline['duration_s'])}, priority {pipeline['priority']})",
        highlight=False,
    )
    table = Table("stage", "after", "status", "job", "time", "key metric", "note")
    for stage in pipeline["stages"]:
        style = STATUS_STYLE.get(stage["status"], "")
        job = f"{stage['job_id']} {stage['job_status']}" if stage["job_id"] else "-"
        metric = stage.get("key_metric")
        shown = (
            f"{metric['name']} {metric['value']:.4g}"
            if metric and metric["value"] is not None
            else "-"
        )
        note = stage.get("reason") or ""
        if stage["status"] == "succeeded" and (stage.get("outputs") or {}).get("checkpoint"):
            note = f"model {stage['outputs']['checkpoint']}"
        table.add_row(
            stage["name"] + (f" (run {stage['run']})" if stage["run"] > 1 else ""),
            ", ".join(stage["depends_on"]) or "-",
            f"[{style}]{stage['status']}[/{style}]" if style else stage["status"],
            job,
            _duration(stage["duration_s"]),
            shown,
            note,
        )
    console.print(table)
    if pipeline.get("error"):
        err.print(pipeline["error"], highlight=False, markup=False)


@pipelines_app.command("show")
def pipelines_show(
    pipeline_id: int, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show a pipeline: each stage with what it waits for, its state, job, time and metric."""
    with client() as api:
        pipeline = call(api.get, f"pipelines/{pipeline_id}")
        if as_json:
            events = call(api.get, f"pipelines/{pipeline_id}/events")
            console.print_json(data={"pipeline": pipeline, "events": events})
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


@pipelines_app.command("cancel")
def pipelines_cancel(pipeline_id: int) -> None:
    """Cancel a pipeline: pending stages are dropped, running stage jobs stopped."""
    with client() as api:
        pipeline = call(api.pipeline_action, pipeline_id, "cancel")
    console.print(f"pipeline {pipeline_id} {pipeline['status']}")


@pipelines_app.command("pause")
def pipelines_pause(pipeline_id: int) -> None:
    """Pause a pipeline: no stage starts; running stage jobs checkpoint and stop."""
    with client() as api:
        pipeline = call(api.pipeline_action, pipeline_id, "pause")
    console.print(f"pipeline {pipeline_id} {pipeline['status']}")


@pipelines_app.command("resume")
def pipelines_resume(pipeline_id: int) -> None:
    """Resume a paused pipeline."""
    with client() as api:
        pipeline = call(api.pipeline_action, pipeline_id, "resume")
    console.print(f"pipeline {pipeline_id} {pipeline['status']}")


@pipelines_app.command("retry")
def pipelines_retry(
    pipeline_id: int,
    from_stage: Annotated[
        str | None, typer.Option(help="Rerun this stage and what follows it.")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Follow the pipeline until it ends.")] = False,
) -> None:
    """Retry a failed or cancelled pipeline; succeeded stages upstream are reused."""
    with client() as api:
        pipeline = call(api.pipeline_action, pipeline_id, "retry", {"from_stage": from_stage})
        rerun = [s["name"] for s in pipeline["stages"] if s["status"] in ("pending", "running")]
        console.print(
            f"pipeline {pipeline_id} {pipeline['status']}; rerunning {', '.join(rerun)}",
            highlight=False,
        )
        if watch:
            _watch_pipeline(api, pipeline_id)


@pipelines_app.command("templates")
def pipelines_templates(
    name: Annotated[str | None, typer.Argument(help="Print this template's YAML.")] = None,
) -> None:
    """List the shipped templates, or print one (save it, edit it, submit it)."""
    with client() as api:
        if name is not None:
            sys.stdout.write(call(api.get, f"pipelines/templates/{name}")["yaml"])
            return
        found = call(api.get, "pipelines/templates")
    table = Table("name", "stages", "description")
    for template in found:
        order = [f"{s} (after {', '.join(d)})" if d else s for s, d in template["stages"].items()]
        table.add_row(template["name"], ", ".join(order), template["description"])
    console.print(table)
