"""`tp login`, `tp whoami`, `tp users` and `tp tokens`: who uses the platform, with which role,
and their API tokens."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from training_platform.cli.client import ApiClient, save_token
from training_platform.cli.common import (
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
    print_table,
    settings_or_exit,
    time_column,
)

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


def whoami(output: OutputOption = Output.table) -> None:
    """Who the CLI acts as, with which role."""
    with client() as api:
        me = call(api.get, "users/me")

    def show(me: dict[str, Any]) -> None:
        code = ", may upload code" if me["can_run_code"] else ""
        console.print(f"{me['user']} ({me['role']}{code}), token {me['token']}", highlight=False)

    emit(output, me, show)


USER_COLUMNS = [
    Column("name", lambda u: u["name"], flex=True),
    Column("role", lambda u: u["role"]),
    Column("code", lambda u: "yes" if u["can_run_code"] else "-"),
    time_column("created", "created_at"),
    time_column("disabled", "disabled_at"),
]


@users_app.command("list")
def users_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Every user (admin)."""
    with client() as api:
        found = call(api.get, "users")
    emit(output, found, lambda found: print_table(USER_COLUMNS, found["items"], wide=wide))


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
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """Who did what among the actions that need admin or the code permission (admin)."""
    params: dict[str, str | int] = {"limit": limit} | ({"user": user} if user else {})
    with client() as api:
        found = call(api.request, "GET", "/api/v1/audit", params=params)
    emit(output, found, lambda found: print_table(AUDIT_COLUMNS, found["items"], wide=wide))


AUDIT_COLUMNS = [
    time_column("at", "at"),
    Column("user", lambda e: e["user"], flex=True),
    Column("token", lambda e: e["token"], drop=1, flex=True),
    Column("action", lambda e: f"{e['method']} {e['path']}", flex=True),
    Column("status", lambda e: str(e["status"]), justify="right"),
]
TOKEN_COLUMNS = [
    Column("name", lambda t: t["name"], flex=True),
    Column("user", lambda t: t["user"] or "-", flex=True),
    Column("role", lambda t: t["role"]),
    time_column("created", "created_at"),
    time_column("revoked", "revoked_at"),
    Column("", lambda t: "this one" if t["current"] else ""),
]


@tokens_app.command("list")
def tokens_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Your tokens (an admin's: every token), revoked ones too; secrets are never shown again."""
    with client() as api:
        found = call(api.get, "tokens")
    emit(output, found, lambda found: print_table(TOKEN_COLUMNS, found["items"], wide=wide))


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
def tokens_revoke(name: str, output: OutputOption = Output.table) -> None:
    """Revoke a token: every later request with it is refused (401)."""
    act(
        "POST",
        f"tokens/{quote(name, safe='')}/revoke",
        lambda revoked: f"token {revoked['name']} revoked at {revoked['revoked_at'][:19]}",
        output,
    )


__all__ = ["audit", "login", "logout", "tokens_app", "users_app", "whoami"]
