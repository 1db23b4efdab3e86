"""`tp models` and `tp rewards`: the models jobs start from (list, register; soup, select and
lineage come from cli/surgery.py), and the reward functions (builtin and uploaded files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training_platform.cli.common import (
    Column,
    Output,
    OutputOption,
    WideOption,
    call,
    client,
    console,
    emit,
    print_table,
)
from training_platform.cli.surgery import models_lineage, models_select, models_soup

models_app = typer.Typer(help="Registered models.", no_args_is_help=True)
rewards_app = typer.Typer(
    help="Reward functions: builtin ones and uploaded files.", no_args_is_help=True
)
# registered first, so `tp models --help` lists them first, as it always has
models_app.command("soup")(models_soup)
models_app.command("select")(models_select)
models_app.command("lineage")(models_lineage)


MODEL_COLUMNS = [
    Column("id", lambda m: str(m["id"]), justify="right"),
    Column("name", lambda m: m["name"], flex=True),
    Column("source", lambda m: m["source"], drop=1),
    Column("description", lambda m: m["description"], flex=True),
]


@models_app.command("list")
def models_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Models jobs can start from."""
    with client() as api:
        models = call(api.catalog, "models")
    emit(output, models, lambda models: print_table(MODEL_COLUMNS, models, wide=wide))


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Option(help="Name jobs will use.")],
    path: Annotated[str | None, typer.Option(help="A directory inside a model root.")] = None,
    hub_id: Annotated[str | None, typer.Option(help="Hugging Face id (owner/name).")] = None,
    from_job: Annotated[int | None, typer.Option(help="A succeeded job's final model.")] = None,
    description: Annotated[str, typer.Option()] = "",
    project: Annotated[
        str | None,
        typer.Option(help="The project it belongs to (default: default; a job's: the job's)."),
    ] = None,
) -> None:
    """Register a model: from a model root (TP_MODEL_ROOTS), by hub id, or a job's output."""
    body: dict[str, Any] = {"name": name, "description": description}
    if project is not None:
        body["project"] = project
    if path:
        body["path"] = path
    if hub_id:
        body["hub_id"] = hub_id
    if from_job is not None:
        body["job_id"] = from_job
    with client() as api:
        item = call(api.register_model, body)
    console.print(f"model {item['id']} {item['name']} ({item['source']})", highlight=False)


@rewards_app.command("list")
def rewards_list(output: OutputOption = Output.table) -> None:
    """Builtin reward functions and uploaded reward files."""
    with client() as api:
        found = call(api.get, "rewards")
    emit(output, found, _print_rewards)


def _print_rewards(found: dict[str, Any]) -> None:
    console.print("builtin: " + ", ".join(found["builtin"]), highlight=False)
    for item in found["files"]:
        console.print(
            f"file:{item['name']}  sha256 {item['sha256'][:12]}  {item['description']}",
            highlight=False,
        )


@rewards_app.command("upload")
def rewards_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .py file.")],
    name: Annotated[str, typer.Option(help="Jobs choose it as reward=file:<name>.")],
    description: Annotated[str, typer.Option()] = "",
) -> None:
    """Upload a reward file defining compute_score(data_source, solution_str, ground_truth)."""
    with client() as api:
        item = call(api.upload, "rewards", file, name=name, description=description)
    console.print(
        f"reward file:{item['name']} stored (sha256 {item['sha256'][:12]})", highlight=False
    )
