"""`tp hosts` and `tp secrets`: register remote GPU servers (SSH or Ray), check, edit and
bootstrap them; re-encrypt the stored secrets."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from training_platform.cli.client import ApiClient
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
    fail,
    print_table,
)

hosts_app = typer.Typer(
    help="Remote GPU servers jobs run on (over SSH or through Ray).", no_args_is_help=True
)
secrets_app = typer.Typer(help="Secrets stored by the platform.", no_args_is_help=True)


def _read_secret(password_stdin: bool, key_file: Path | None, *, prompt: bool) -> dict[str, str]:
    """The credential, from stdin or a key file (never from the command line)."""
    if password_stdin and key_file:
        fail("give one of --password-stdin or --key-file", 2)
    if key_file is not None:
        try:
            return {"private_key": key_file.expanduser().read_text()}
        except OSError as error:
            fail(f"cannot read {key_file}: {error.strerror or error}", 2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            fail("no password on stdin", 2)
        return {"password": password}
    if prompt:
        return {"password": typer.prompt("password", hide_input=True)}
    return {}


def _confirm_key(api: ApiClient, address: str, port: int, expected: str | None) -> str:
    """The server's fingerprint, once the user confirmed it (or it equals --fingerprint)."""
    found = call(
        api.request, "POST", "/api/v1/hosts/host-key", json={"address": address, "port": port}
    )
    shown = f"{found['key_type']} {found['fingerprint']}"
    if expected is not None:
        if expected != found["fingerprint"]:
            fail(f"{address}:{port} presents {shown}, not the fingerprint you gave ({expected})")
        return str(found["fingerprint"])
    console.print(f"{address}:{port} presents the host key [bold]{shown}[/bold]")
    console.print("Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the server.")
    if not sys.stdin.isatty() or not typer.confirm("Trust this key?", default=False):
        fail("host key not confirmed (pass --fingerprint to confirm it non-interactively)")
    return str(found["fingerprint"])


def _environment(venv: str | None, conda_env: str | None, python: str | None) -> Any:
    given = {k: v for k, v in {"venv": venv, "conda_env": conda_env, "python": python}.items() if v}
    if len(given) > 1:
        fail("give one of --venv, --conda-env or --python", 2)
    return given or None


def _print_host(host: dict[str, Any]) -> None:
    check = host.get("last_check") or {}
    where = (
        host["ray_address"]
        if host["runner"] == "ray"
        else f"{host['user']}@{host['address']}:{host['port']}"
    )
    console.print(f"[bold]{host['name']}[/bold]  {host['runner']}  {where}")
    if host["runner"] == "ssh":
        console.print(f"  host key: {host['host_key_type']} {host['host_key_fingerprint']}")
        console.print(f"  auth: {host['auth']}   work root: {host['work_root']}")
    console.print(f"  python: {host['python']}   CPU slots: {host['cpu_slots']}")
    if host["labels"]:
        console.print(f"  labels: {', '.join(host['labels'])}")
    if check.get("ready"):
        gpus = check.get("gpus", [])
        names = ", ".join(sorted({g.get("name", "?") for g in gpus})) or "none"
        console.print(
            f"  ready: platform {check.get('platform_version', '?')}, Python "
            f"{check.get('python', '?')}, {len(gpus)} GPU(s) ({names})"
            if host["runner"] == "ssh"
            else f"  ready: Ray {check.get('ray', '?')}"
        )
    elif check:
        console.print(f"  [yellow]not ready:[/yellow] {check.get('problem')}")
    if host.get("last_error"):
        console.print(f"  [red]last error:[/red] {host['last_error']}")


@hosts_app.command("add")
def hosts_add(
    name: str,
    address: Annotated[str | None, typer.Option(help="DNS name or IP of the server.")] = None,
    user: Annotated[str | None, typer.Option(help="The account jobs run as.")] = None,
    port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    key_file: Annotated[
        Path | None, typer.Option(help="A private key file to log in with.")
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option(help="The host key fingerprint you checked (SHA256:...).")
    ] = None,
    work_root: Annotated[str | None, typer.Option(help="Default: ~/training_platform.")] = None,
    venv: Annotated[str | None, typer.Option(help="The platform's virtualenv there.")] = None,
    conda_env: Annotated[str | None, typer.Option(help="Or a conda environment.")] = None,
    python: Annotated[str | None, typer.Option(help="Or an interpreter path.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    cpu_slots: Annotated[
        int, typer.Option(help="CPU trainings at once there (0: GPU jobs only).")
    ] = 0,
    runner: Annotated[str, typer.Option(help="ssh or ray.")] = "ssh",
    ray_address: Annotated[str | None, typer.Option(help="Ray Jobs API address.")] = None,
) -> None:
    """Register a server: confirm its host key, log in once, prepare its working root."""
    body: dict[str, Any] = {
        "name": name,
        "runner": runner,
        "labels": label or [],
        "cpu_slots": cpu_slots,
        "environment": _environment(venv, conda_env, python),
    }
    with client() as api:
        if runner == "ray":
            body["ray_address"] = ray_address
        else:
            if not address or not user:
                fail("an ssh host needs --address and --user", 2)
            body.update(address=address, user=user, port=port, work_root=work_root)
            body.update(_read_secret(password_stdin, key_file, prompt=sys.stdin.isatty()))
            if "password" not in body and "private_key" not in body:
                fail("give --password-stdin or --key-file", 2)
            body["host_key_fingerprint"] = _confirm_key(api, address, port, fingerprint)
        host = call(
            api.request,
            "POST",
            "/api/v1/hosts",
            json={k: v for k, v in body.items() if v is not None},
        )
    console.print(f"registered host {host['name']}")
    _print_host(host)


def _host_state(host: dict[str, Any]) -> str:
    check = host.get("last_check") or {}
    if host.get("last_error"):
        return f"error: {host['last_error']}"
    return "ready" if check.get("ready") else f"not ready: {check.get('problem', '?')}"


HOST_COLUMNS = [
    Column("name", lambda h: h["name"]),
    Column("runner", lambda h: h["runner"], drop=2),
    Column(
        "where",
        lambda h: h["ray_address"] if h["runner"] == "ray" else f"{h['user']}@{h['address']}",
        flex=True,
    ),
    Column(
        "GPUs", lambda h: str(len((h.get("last_check") or {}).get("gpus", []))), justify="right"
    ),
    Column("CPU slots", lambda h: str(h["cpu_slots"]), drop=1, justify="right"),
    Column("state", _host_state, flex=True),
]


@hosts_app.command("list")
def hosts_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Every registered host."""
    with client() as api:
        found = call(api.get, "hosts")

    def show(found: dict[str, Any]) -> None:
        if not found["hosts"]:
            console.print("no remote host registered (tp hosts add)")
            return
        print_table(HOST_COLUMNS, found["hosts"], wide=wide)

    emit(output, found, show)


@hosts_app.command("show")
def hosts_show(name: str, output: OutputOption = Output.table) -> None:
    """One host: where, how, its environment and GPUs."""
    with client() as api:
        host = call(api.get, f"hosts/{name}")
    emit(output, host, _print_host)


@hosts_app.command("check")
def hosts_check(name: str, output: OutputOption = Output.table) -> None:
    """Connect now and read the environment and GPUs again."""
    with client() as api:
        host = call(api.request, "POST", f"/api/v1/hosts/{name}/check")
    emit(output, host, _print_host)
    if host.get("last_error"):
        raise typer.Exit(1)


@hosts_app.command("edit")
def hosts_edit(
    name: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    key_file: Annotated[Path | None, typer.Option()] = None,
    work_root: Annotated[str | None, typer.Option()] = None,
    venv: Annotated[str | None, typer.Option()] = None,
    conda_env: Annotated[str | None, typer.Option()] = None,
    python: Annotated[str | None, typer.Option()] = None,
    label: Annotated[list[str] | None, typer.Option(help="Replaces the labels.")] = None,
    cpu_slots: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Change a host; a new credential or root is checked by logging in first."""
    body: dict[str, Any] = {
        "work_root": work_root,
        "environment": _environment(venv, conda_env, python),
        "labels": label,
        "cpu_slots": cpu_slots,
        **_read_secret(password_stdin, key_file, prompt=False),
    }
    with client() as api:
        host = call(
            api.request,
            "PATCH",
            f"/api/v1/hosts/{name}",
            json={k: v for k, v in body.items() if v is not None},
        )
    _print_host(host)


@hosts_app.command("trust-key")
def hosts_trust_key(
    name: str,
    fingerprint: Annotated[
        str | None, typer.Option(help="The new fingerprint you checked.")
    ] = None,
) -> None:
    """Accept a server's new host key (after a reinstall), once you checked it."""
    with client() as api:
        host = call(api.get, f"hosts/{name}")
        confirmed = _confirm_key(api, host["address"], host["port"], fingerprint)
        host = call(
            api.request, "POST", f"/api/v1/hosts/{name}/trust-key", json={"fingerprint": confirmed}
        )
    _print_host(host)


@hosts_app.command("bootstrap")
def hosts_bootstrap(
    name: str,
    environment_set: Annotated[
        str, typer.Option("--set", help="gpu-verl (verl and TRL) or train-cpu (TRL only).")
    ] = "gpu-verl",
    check_only: Annotated[
        bool, typer.Option("--check", help="Only report what is installed there.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 3 * 3600,
) -> None:
    """Install the pinned environment on a host; report its driver, CUDA, torch and verl."""
    body = {"environment_set": environment_set, "check_only": check_only}
    with client() as api:
        call(api.request, "POST", f"/api/v1/hosts/{name}/bootstrap", json=body)
        deadline = time.monotonic() + timeout
        record: dict[str, Any] = {}
        with console.status(f"{'checking' if check_only else 'installing'} on {name}"):
            while time.monotonic() < deadline:
                host = call(api.get, f"hosts/{name}")
                record = host.get("bootstrap") or {}
                if record.get("state") in ("succeeded", "failed"):
                    break
                time.sleep(2)
    if record.get("state") not in ("succeeded", "failed"):
        fail(f"the bootstrap of {name} did not finish within {timeout:.0f} s; see tp hosts show")
    report = record.get("report") or {}
    if report:
        console.print_json(data=report)
    if record["state"] != "succeeded":
        why = record.get("error") or "; ".join(report.get("problems", []))
        fail(f"bootstrap of {name} failed: {why or record.get('log_tail', '')[-500:]}")
    console.print(f"{name} is ready")


@hosts_app.command("remove")
def hosts_remove(name: str) -> None:
    """Forget a host (refused while jobs are placed there)."""
    act("DELETE", f"hosts/{name}", lambda _: f"removed host {name}")


@secrets_app.command("rotate")
def secrets_rotate(output: OutputOption = Output.table) -> None:
    """Re-encrypt every stored secret under a new key and drop the old one."""
    act(
        "POST",
        "secrets/rotate",
        lambda done: f"re-encrypted {done['reencrypted']} secret(s) under a new key",
        output,
    )
