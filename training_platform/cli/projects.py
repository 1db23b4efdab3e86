"""`tp projects`: projects, their GPU quota and members, and GPU-hours per project and user."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

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
    fail,
    print_table,
)

projects_app = typer.Typer(
    help="Projects: GPU guarantees and limits, members, GPU-hours.", no_args_is_help=True
)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _members(project: dict[str, Any]) -> str:
    if project["name"] == "default":
        return "everyone"
    return ", ".join(project["members"]) or "none yet"


def _show(project: dict[str, Any]) -> None:
    console.print(
        f"project {project['name']}: guaranteed {project['guaranteed_gpus']} GPU(s), "
        f"max {_limit(project['max_gpus'])}, per user {_limit(project['user_max_gpus'])}; "
        f"members: {_members(project)}",
        highlight=False,
    )


PROJECT_COLUMNS = [
    Column("name", lambda p: p["name"], flex=True),
    Column("guaranteed", lambda p: str(p["guaranteed_gpus"]), justify="right"),
    Column("max", lambda p: _limit(p["max_gpus"]), justify="right"),
    Column("per user", lambda p: _limit(p["user_max_gpus"]), justify="right"),
    Column(
        "running GPUs",
        lambda p: str(p["running_gpus"]),
        short=("running", lambda p: str(p["running_gpus"])),
        justify="right",
    ),
    Column("members", _members, flex=True),
]


@projects_app.command("list")
def projects_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """The projects you belong to (an admin: every one), with the GPUs their work holds."""
    with client() as api:
        found = call(api.get, "projects")
    emit(output, found, lambda found: print_table(PROJECT_COLUMNS, found["items"], wide=wide))


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_' and '-'.")],
    guaranteed: Annotated[int, typer.Option(min=0, help="GPUs it may always claim.")] = 0,
    max_gpus: Annotated[int | None, typer.Option("--max", min=0, help="At most, at once.")] = None,
    per_user: Annotated[int | None, typer.Option(min=0, help="At most per member.")] = None,
    description: str = "",
) -> None:
    """Add a project with its GPU quota (admin)."""
    body = {
        "name": name,
        "description": description,
        "guaranteed_gpus": guaranteed,
        "max_gpus": max_gpus,
        "user_max_gpus": per_user,
    }
    with client() as api:
        _show(call(api.request, "POST", "/api/v1/projects", json=body))


@projects_app.command("update")
def projects_update(
    name: str,
    guaranteed: Annotated[int | None, typer.Option(min=0)] = None,
    max_gpus: Annotated[int | None, typer.Option("--max", min=0)] = None,
    per_user: Annotated[int | None, typer.Option(min=0)] = None,
    no_max: Annotated[bool, typer.Option("--no-max", help="Remove the maximum.")] = False,
    no_per_user: Annotated[bool, typer.Option("--no-per-user", help="Remove the cap.")] = False,
) -> None:
    """Change a project's quota (admin)."""
    body: dict[str, Any] = {}
    if guaranteed is not None:
        body["guaranteed_gpus"] = guaranteed
    if max_gpus is not None or no_max:
        body["max_gpus"] = None if no_max else max_gpus
    if per_user is not None or no_per_user:
        body["user_max_gpus"] = None if no_per_user else per_user
    if not body:
        fail("nothing to change: give --guaranteed, --max/--no-max or --per-user/--no-per-user", 2)
    with client() as api:
        path = f"/api/v1/projects/{quote(name, safe='')}"
        _show(call(api.request, "PATCH", path, json=body))


@projects_app.command("add-member")
def projects_add_member(name: str, user: str) -> None:
    """Add a user to a project (admin)."""
    with client() as api:
        path = f"/api/v1/projects/{quote(name, safe='')}/members"
        _show(call(api.request, "POST", path, json={"user": user}))


@projects_app.command("remove-member")
def projects_remove_member(name: str, user: str) -> None:
    """Remove a user from a project (admin); their jobs stay in it."""
    with client() as api:
        path = f"/api/v1/projects/{quote(name, safe='')}/members/{quote(user, safe='')}"
        _show(call(api.request, "DELETE", path))


@projects_app.command("usage")
def projects_usage(
    days: Annotated[float, typer.Option(min=0.001, max=3660, help="The window.")] = 7,
    output: OutputOption = Output.table,
) -> None:
    """GPU-hours per project and user over the last DAYS days, from the GPUs jobs held."""
    with client() as api:
        found = call(api.request, "GET", "/api/v1/projects/usage", params={"days": days})
    emit(output, found, lambda found: _print_usage(found, days))


USAGE_COLUMNS = [
    Column("project", lambda r: r["project"], flex=True),
    Column("user", lambda r: r["user"] or "-", flex=True),
    Column("GPU-hours", lambda r: f"{r['gpu_hours']:.3f}", justify="right"),
    Column("GPUs now", lambda r: str(r["running_gpus"]), justify="right"),
]


def _print_usage(found: dict[str, Any], days: float) -> None:
    if not found["items"]:
        console.print(f"no GPU use in the last {days:g} day(s)")
        return
    print_table(USAGE_COLUMNS, found["items"])
    totals = ", ".join(f"{p} {h:.3f}" for p, h in found["by_project"].items())
    console.print(f"GPU-hours by project: {totals}", highlight=False)
