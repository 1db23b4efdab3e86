"""`tp projects`: projects, their GPU quota and members, and GPU-hours per project and user."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from training_platform.cli.common import call, client, console, fail

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


@projects_app.command("list")
def projects_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The projects you belong to (an admin: every one), with the GPUs their work holds."""
    with client() as api:
        found = call(api.get, "projects")
    if as_json:
        console.print_json(data=found)
        return
    table = Table("name", "guaranteed", "max", "per user", "running GPUs", "members")
    for project in found["items"]:
        table.add_row(
            project["name"],
            str(project["guaranteed_gpus"]),
            _limit(project["max_gpus"]),
            _limit(project["user_max_gpus"]),
            str(project["running_gpus"]),
            _members(project),
        )
    console.print(table)


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """GPU-hours per project and user over the last DAYS days, from the GPUs jobs held."""
    with client() as api:
        found = call(api.request, "GET", "/api/v1/projects/usage", params={"days": days})
    if as_json:
        console.print_json(data=found)
        return
    if not found["items"]:
        console.print(f"no GPU use in the last {days:g} day(s)")
        return
    table = Table("project", "user", "GPU-hours", "GPUs now")
    for row in found["items"]:
        table.add_row(
            row["project"],
            row["user"] or "-",
            f"{row['gpu_hours']:.3f}",
            str(row["running_gpus"]),
        )
    console.print(table)
    totals = ", ".join(f"{p} {h:.3f}" for p, h in found["by_project"].items())
    console.print(f"GPU-hours by project: {totals}", highlight=False)
