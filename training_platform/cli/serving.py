"""`tp serve` and `tp endpoints`: serve a model behind the platform's API, and register the
OpenAI-compatible servers evaluations can call."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any

import typer

from training_platform.cli.common import (
    Column,
    Output,
    OutputOption,
    WideOption,
    act,
    call,
    catalog_ref,
    client,
    console,
    emit,
    fail,
    print_table,
)

serve_app = typer.Typer(
    help="Serve a model over an OpenAI-compatible API, reached through the platform.",
    no_args_is_help=True,
)
endpoints_app = typer.Typer(
    help="OpenAI-compatible endpoints (their API keys stored encrypted).", no_args_is_help=True
)


@serve_app.command("start")
def serve_start(
    model: Annotated[str | None, typer.Argument(help="A registered model.")] = None,
    job: Annotated[int | None, typer.Option(help="Or: the final model of this job.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="Or: a job's checkpoint, as JOB:STEP (e.g. 12:200).")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, transformers or vllm.")] = "auto",
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    name: Annotated[str | None, typer.Option(help="The serve job's name.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it answers.")] = False,
    project: Annotated[
        str | None, typer.Option(help="The project it belongs to (default: default).")
    ] = None,
) -> None:
    """Start a serve job; it serves until `tp serve stop JOB`."""
    body: dict[str, Any] = {"engine": engine, "resources": {"gpus": gpus}}
    if project is not None:
        body["project"] = project
    if name is not None:
        body["name"] = name
    if model is not None:
        body["model"] = catalog_ref(model)
    if job is not None:
        body["job"] = job
    if checkpoint is not None:
        job_id, _, step = checkpoint.partition(":")
        if not (job_id.isdigit() and step.isdigit()):
            fail(f"--checkpoint {checkpoint!r}: give JOB:STEP, two whole numbers (e.g. 12:200)", 2)
        body["checkpoint"] = {"job": int(job_id), "step": int(step)}
    with client() as api:
        started = call(api.request, "POST", "/api/v1/serving", json=body)
        console.print(f"serve job {started['id']} submitted", highlight=False)
        if not wait:
            return
        while True:
            served = {s["job_id"]: s for s in call(api.get, "serving")}.get(started["id"])
            if served is None:
                fail(f"serve job {started['id']} ended before it answered")
            if served["ready"]:
                break
            time.sleep(1)
    console.print(
        f"serving {served['model']} with {served['engine']} at "
        f"{api.base_url.rstrip('/')}{served['url']} (your API token is the key)",
        highlight=False,
    )


SERVE_COLUMNS = [
    Column("job", lambda s: str(s["job_id"]), justify="right"),
    Column("name", lambda s: s["name"], drop=2, flex=True),
    Column("model", lambda s: s["model"], flex=True),
    Column("status", lambda s: s["status"]),
    Column("ready", lambda s: "yes" if s["ready"] else "no"),
    Column("engine", lambda s: s["engine"] or "-", drop=1),
    Column("url", lambda s: s["url"], flex=True),
]


@serve_app.command("list")
def serve_list(
    all_jobs: Annotated[bool, typer.Option("--all", help="Ended ones too.")] = False,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """Serve jobs and whether they answer."""
    with client() as api:
        served = call(api.request, "GET", "/api/v1/serving", params={"include_ended": all_jobs})

    def show(served: list[dict[str, Any]]) -> None:
        if not served:
            console.print("no serve jobs")
            return
        print_table(SERVE_COLUMNS, served, wide=wide)

    emit(output, served, show)


@serve_app.command("stop")
def serve_stop(job: int, output: OutputOption = Output.table) -> None:
    """Stop serving: cancel the serve job (its lease is freed)."""
    act("POST", f"jobs/{job}/cancel", lambda _: f"serve job {job}: stopping", output)


@serve_app.command("chat")
def serve_chat(
    job: int,
    message: str,
    max_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 128,
    temperature: Annotated[float, typer.Option(min=0, max=2)] = 0.0,
) -> None:
    """Send one user message to a served model and print its reply."""
    body = {
        "messages": [{"role": "user", "content": message}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    with client() as api:
        reply = call(api.request, "POST", f"/api/v1/serving/{job}/v1/chat/completions", json=body)
    console.print(reply["choices"][0]["message"]["content"] or "", highlight=False, markup=False)


@endpoints_app.command("add")
def endpoints_add(
    name: str,
    base_url: Annotated[str, typer.Option(help="Up to /v1, e.g. https://host/v1.")],
    model: Annotated[str, typer.Option(help="The model name sent in requests.")],
    api_key_env: Annotated[
        str | None, typer.Option(help="Read the API key from this environment variable.")
    ] = None,
    api_key_stdin: Annotated[
        bool, typer.Option("--api-key-stdin", help="Read the API key from standard input.")
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    max_retries: Annotated[int, typer.Option(min=0, max=10)] = 3,
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second.")] = None,
) -> None:
    """Register an endpoint; the key never goes on the command line."""
    key: str | None = None
    if api_key_env and api_key_stdin:
        fail("give one of --api-key-env and --api-key-stdin", 2)
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            fail(f"--api-key-env: ${api_key_env} is not set", 2)
    if api_key_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            fail("--api-key-stdin: no key on standard input", 2)
    body: dict[str, Any] = {
        "name": name,
        "base_url": base_url,
        "model": model,
        "concurrency": concurrency,
        "max_retries": max_retries,
        "rate_limit": rate_limit,
    }
    if key:
        body["api_key"] = key
    with client() as api:
        created = call(api.request, "POST", "/api/v1/endpoints", json=body)
    key_note = "with its key stored encrypted" if created["has_api_key"] else "without a key"
    console.print(f"endpoint {created['name']} registered {key_note}", highlight=False)


ENDPOINT_COLUMNS = [
    Column("name", lambda e: e["name"]),
    Column("base url", lambda e: e["base_url"], flex=True),
    Column("model", lambda e: e["model"], flex=True),
    Column("key", lambda e: "yes" if e["has_api_key"] else "no"),
    Column(
        "concurrency",
        lambda e: str(e["concurrency"]),
        drop=2,
        short=("conc.", lambda e: str(e["concurrency"])),
        justify="right",
    ),
    Column("retries", lambda e: str(e["max_retries"]), drop=3, justify="right"),
    Column(
        "rate/s",
        lambda e: f"{e['rate_limit']:g}" if e["rate_limit"] else "-",
        drop=1,
        justify="right",
    ),
    Column("job", lambda e: str(e["job_id"] or "-"), justify="right"),
]


@endpoints_app.command("list")
def endpoints_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Every endpoint (never a key)."""
    with client() as api:
        endpoints = call(api.get, "endpoints")

    def show(endpoints: list[dict[str, Any]]) -> None:
        if not endpoints:
            console.print("no endpoints")
            return
        print_table(ENDPOINT_COLUMNS, endpoints, wide=wide)

    emit(output, endpoints, show)


@endpoints_app.command("rm")
def endpoints_rm(name: str) -> None:
    """Forget an endpoint and its key."""
    act("DELETE", f"endpoints/{name}", lambda _: f"endpoint {name} removed")
