"""`tp login`, `tp whoami`, `tp users` and `tp tokens`: who uses the platform, with which role,
and their API tokens."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from training_platform.cli.client import ApiClient, save_token
from training_platform.cli.common import call, client, console, err, fail, settings_or_exit

users_app = typer.Typer(
    help="Users and their roles: viewer reads, member also works, admin also manages.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(help="API tokens: list, create, revoke.", no_args_is_help=True)

ROLE = typer.Option(help="viewer, member or admin.")


def login(
    token: Annotated[
        str | None,
        typer.Option(help="The token (default: asked without echo).", show_default=False),
    ] = None,
) -> None:
    """Check a token against the API and keep it for this API's later commands (in
    ~/.config/training_platform/credentials.json, mode 0600)."""
    settings = settings_or_exit()
    secret = token or typer.prompt("API token", hide_input=True)
    api = ApiClient(settings.resolved_api_url, secret)
    try:
        me = call(api.get, "users/me")
    finally:
        api.close()
    path = save_token(settings.resolved_api_url, secret)
    console.print(
        f"logged in to {settings.resolved_api_url} as {me['user']} ({me['role']}"
        + (", may upload code" if me["can_run_code"] else "")
        + f"); token kept in {path}",
        highlight=False,
    )


def logout() -> None:
    """Forget the token kept for this API."""
    settings = settings_or_exit()
    save_token(settings.resolved_api_url, None)
    console.print(f"logged out of {settings.resolved_api_url}", highlight=False)


def whoami(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Who the CLI acts as, with which role."""
    with client() as api:
        me = call(api.get, "users/me")
    if as_json:
        console.print_json(data=me)
        return
    code = ", may upload code" if me["can_run_code"] else ""
    console.print(f"{me['user']} ({me['role']}{code}), token {me['token']}", highlight=False)


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every user (admin)."""
    with client() as api:
        found = call(api.get, "users")
    if as_json:
        console.print_json(data=found)
        return
    table = Table("name", "role", "code", "created", "disabled")
    for user in found["items"]:
        table.add_row(
            user["name"],
            user["role"],
            "yes" if user["can_run_code"] else "-",
            user["created_at"][:19],
            (user["disabled_at"] or "-")[:19],
        )
    console.print(table)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_' and '-'.")],
    role: Annotated[str, ROLE] = "member",
    code: Annotated[bool, typer.Option("--code", help="May upload reward files.")] = False,
    token: Annotated[
        str | None, typer.Option(help="Also make this token for the user and print it.")
    ] = None,
) -> None:
    """Add a user (admin); with --token, also their first token."""
    with client() as api:
        body = {"name": name, "role": role, "can_run_code": code}
        made = call(api.request, "POST", "/api/v1/users", json=body)
        console.print(f"user {made['name']} created ({made['role']})", highlight=False)
        if token:
            secret = call(api.request, "POST", "/api/v1/tokens", json={"name": token, "user": name})
            err.print(f"token {token} of {name}; its secret, shown only now:", highlight=False)
            typer.echo(secret["token"])


@users_app.command("update")
def users_update(
    name: str,
    role: Annotated[str | None, ROLE] = None,
    code: Annotated[
        bool | None, typer.Option("--code/--no-code", help="May upload reward files.")
    ] = None,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Lock the user out (401).")
    ] = None,
) -> None:
    """Change a user's role, code permission, or lock them out (admin)."""
    body = {
        key: value
        for key, value in (("role", role), ("can_run_code", code), ("disabled", disable))
        if value is not None
    }
    if not body:
        fail("nothing to change: give --role, --code/--no-code or --disable/--enable", 2)
    with client() as api:
        user = call(api.request, "PATCH", f"/api/v1/users/{quote(name, safe='')}", json=body)
    state = "disabled" if user["disabled_at"] else "enabled"
    code_text = ", may upload code" if user["can_run_code"] else ""
    console.print(f"user {user['name']}: {user['role']}{code_text}, {state}", highlight=False)


def audit(
    user: Annotated[str | None, typer.Option(help="Only this user's actions.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Who did what among the actions that need admin or the code permission (admin)."""
    params: dict[str, str | int] = {"limit": limit} | ({"user": user} if user else {})
    with client() as api:
        found = call(api.request, "GET", "/api/v1/audit", params=params)
    if as_json:
        console.print_json(data=found)
        return
    table = Table("at", "user", "token", "action", "status")
    for event in found["items"]:
        table.add_row(
            event["at"][:19],
            event["user"],
            event["token"],
            f"{event['method']} {event['path']}",
            str(event["status"]),
        )
    console.print(table)


@tokens_app.command("list")
def tokens_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Your tokens (an admin's: every token), revoked ones too; secrets are never shown again."""
    with client() as api:
        found = call(api.get, "tokens")
    if as_json:
        console.print_json(data=found)
        return
    table = Table("name", "user", "role", "created", "revoked", "")
    for token in found["items"]:
        table.add_row(
            token["name"],
            token["user"] or "-",
            token["role"],
            token["created_at"][:19],
            (token["revoked_at"] or "-")[:19],
            "this one" if token["current"] else "",
        )
    console.print(table)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_' and '-'.")],
    user: Annotated[str | None, typer.Option(help="Whose token (admin; default: yours).")] = None,
    role: Annotated[str | None, typer.Option(help="At most the user's role.")] = None,
) -> None:
    """Make a token and print its secret: this once only, the platform keeps a hash."""
    body = {"name": name} | ({"user": user} if user else {}) | ({"role": role} if role else {})
    with client() as api:
        made = call(api.request, "POST", "/api/v1/tokens", json=body)
    err.print(
        f"token {made['name']} of {made['user']} ({made['role']}) created; its secret, shown "
        "only now:",
        highlight=False,
    )
    typer.echo(made["token"])


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke a token: every later request with it is refused (401)."""
    with client() as api:
        revoked = call(api.request, "POST", f"/api/v1/tokens/{quote(name, safe='')}/revoke")
    console.print(f"token {revoked['name']} revoked at {revoked['revoked_at'][:19]}")


__all__ = ["audit", "login", "logout", "tokens_app", "users_app", "whoami"]
