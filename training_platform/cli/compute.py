"""`tp compute`: a job's GPU memory before it runs, and which models fit each host's GPUs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from training_platform.cli.common import (
    Column,
    Output,
    OutputOption,
    WideOption,
    call,
    catalog_ref,
    client,
    console,
    emit,
    parse_param,
    print_table,
)

compute_app = typer.Typer(
    help="Size a job before it runs: memory per GPU, what fits, the estimator's error.",
    no_args_is_help=True,
)


@compute_app.command("estimate")
def estimate(
    model: Annotated[str, typer.Argument(help="A registered (local) model.")],
    algorithm: Annotated[str, typer.Option(help="sft, dpo, ppo, grpo, gspo.")] = "sft",
    backend: Annotated[str, typer.Option(help="trl or verl.")] = "trl",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyperparameter key=value.")
    ] = None,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs on one host.")] = 1,
    gpu_type: Annotated[str | None, typer.Option(help="Only GPUs whose name has this.")] = None,
    host: Annotated[str | None, typer.Option(help="Only this host's GPUs.")] = None,
    output: OutputOption = Output.table,
) -> None:
    """Peak memory per GPU of a job, its parts, and configurations that fit."""
    resources: dict[str, Any] = {"gpus": gpus}
    if gpu_type:
        resources["gpu_type"] = gpu_type
    if host:
        resources["host"] = host
    body = {
        "model": catalog_ref(model),
        "backend": backend,
        "algorithm": algorithm,
        "hyperparameters": dict(parse_param(p) for p in param or []),
        "resources": resources,
    }
    with client() as api:
        found = call(api.request, "POST", "/api/v1/compute/estimate", json=body)
    emit(output, found, _print_estimate)


def _print_estimate(found: dict[str, Any]) -> None:
    if not found["sized"]:
        console.print(f"not sized: {found['reason']}", highlight=False)
        return
    result = found["estimate"]
    console.print(found["architecture"], highlight=False)
    console.print(
        f"peak ~{result['device_mb']:,} MB per GPU ({result['phase']}; tensors "
        f"{result['peak_mb']:,} MB)",
        highlight=False,
    )
    parts = Table("part", "MB")
    for name, mb in sorted(result["breakdown_mb"].items(), key=lambda kv: -kv[1]):
        if mb:
            parts.add_row(name, f"{mb:,}")
    console.print(parts)
    devices = found["devices"]
    if devices is None:
        console.print("no GPU matches the resources: nothing to compare with", highlight=False)
    else:
        verdict = "fits" if found["fits"] else "does NOT fit"
        console.print(
            f"{verdict} {devices['name']} ({devices['memory_mb']:,} MB) on {devices['host']}: "
            f"headroom {found['headroom_mb']:,} MB",
            highlight=False,
        )
    band = found["error_band"]
    if band:
        console.print(
            f"estimator error on {band['points']} finished job(s) like this: median "
            f"{band['median_pct']:+}% ({band['low_pct']:+}% to {band['high_pct']:+}%)",
            highlight=False,
        )
    if found["recommendations"]:
        options = Table("configuration", "MB per GPU", "GPUs")
        for option in found["recommendations"]:
            options.add_row(option["summary"], f"{option['device_mb']:,}", str(option["gpus"]))
        console.print(options)


def _fits(use: str, header: str) -> Column:
    """Whether a model fits for one use, with its memory (only yes/no when narrow)."""

    def verdict(model: dict[str, Any]) -> str:
        return "yes" if model[use]["fits"] else "no"

    return Column(
        header,
        lambda m: f"{verdict(m)} ({m[use]['mb']:,} MB)",
        short=(header, verdict),
    )


@compute_app.command("advise")
def advise(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """For each host's GPUs: which registered models fit for inference, LoRA, full training."""
    with client() as api:
        found = call(api.request, "GET", "/api/v1/compute/advice")
    emit(output, found, lambda found: _print_advice(found, wide))


def _print_advice(found: list[dict[str, Any]], wide: bool) -> None:
    if not found:
        console.print("no GPU on any host", highlight=False)
    for kind in found:
        columns = [
            Column("model", lambda m: m["model"], flex=True),
            Column("params", lambda m: f"{m['parameters'] / 1e9:.2f}B", justify="right"),
            _fits("inference", "inference"),
            _fits("lora", "LoRA"),
            _fits("full", "full"),
            _fits("full_sharded", f"full, {kind['count']} GPUs"),
        ]
        title = f"{kind['host']}: {kind['count']} x {kind['gpu']} ({kind['memory_mb']:,} MB)"
        print_table(columns, kind["models"], wide=wide, title=title)
