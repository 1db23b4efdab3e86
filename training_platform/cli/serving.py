"""`tp serve` and `tp endpoints`: serve a model behind the platform's API, and register the
OpenAI-compatible servers evaluations can call."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from training_platform.cli.common import call, catalog_ref, client, console, fail

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


@serve_app.command("list")
def serve_list(
    all_jobs: Annotated[bool, typer.Option("--all", help="Ended ones too.")] = False,
) -> None:
    """Serve jobs and whether they answer."""
    with client() as api:
        served = call(api.request, "GET", "/api/v1/serving", params={"include_ended": all_jobs})
    if not served:
        console.print("no serve jobs")
        return
    table = Table("job", "name", "model", "status", "ready", "engine", "url")
    for s in served:
        table.add_row(
            str(s["job_id"]),
            s["name"],
            s["model"],
            s["status"],
            "yes" if s["ready"] else "no",
            s["engine"] or "-",
            s["url"],
        )
    console.print(table)


@serve_app.command("stop")
def serve_stop(job: int) -> None:
    """Stop serving: cancel the serve job (its lease is freed)."""
    with client() as api:
        call(api.request, "POST", f"/api/v1/jobs/{job}/cancel")
    console.print(f"serve job {job}: stopping", highlight=False)


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


@endpoints_app.command("list")
def endpoints_list() -> None:
    """Every endpoint (never a key)."""
    with client() as api:
        endpoints = call(api.get, "endpoints")
    if not endpoints:
        console.print("no endpoints")
        return
    table = Table("name", "base url", "model", "key", "concurrency", "retries", "rate/s", "job")
    for e in endpoints:
        table.add_row(
            e["name"],
            e["base_url"],
            e["model"],
            "yes" if e["has_api_key"] else "no",
            str(e["concurrency"]),
            str(e["max_retries"]),
            f"{e['rate_limit']:g}" if e["rate_limit"] else "-",
            str(e["job_id"] or "-"),
        )
    console.print(table)


@endpoints_app.command("rm")
def endpoints_rm(name: str) -> None:
    """Forget an endpoint and its key."""
    with client() as api:
        call(api.request, "DELETE", f"/api/v1/endpoints/{name}")
    console.print(f"endpoint {name} removed", highlight=False)
