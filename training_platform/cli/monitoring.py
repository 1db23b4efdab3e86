"""`tp alerts` and `tp webhooks`: the alerts jobs' rules raised and the platform's default
rules; where notifications go."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

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
    load_data_file,
    print_table,
    time_column,
)

alerts_app = typer.Typer(help="Alerts raised by jobs' rules.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Where notifications go (JSON or Slack).", no_args_is_help=True)


ALERT_COLUMNS = [
    Column("id", lambda a: str(a["id"]), justify="right"),
    Column("job", lambda a: str(a["job_id"]), justify="right"),
    time_column("when", "created_at", drop=1),
    Column("severity", lambda a: a["severity"], drop=2),
    Column("message", lambda a: a["message"], flex=True),
    Column("action", lambda a: f"{a['action']}: {a['action_result']}", drop=3, flex=True),
    Column("acknowledged", lambda a: a["acknowledged_by"] or "-", drop=4),
]


@alerts_app.command("list")
def alerts_list(
    job: Annotated[int | None, typer.Option(help="Only this job's alerts.")] = None,
    unacknowledged: Annotated[bool, typer.Option(help="Only those nobody acknowledged.")] = False,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """Alerts, newest first."""
    params: dict[str, Any] = {"unacknowledged": unacknowledged}
    if job is not None:
        params["job_id"] = job
    with client() as api:
        found = call(api.request, "GET", "/api/v1/alerts", params=params)

    def show(found: list[dict[str, Any]]) -> None:
        if not found:
            console.print("no alerts")
            return
        print_table(ALERT_COLUMNS, found, wide=wide)

    emit(output, found, show)


@alerts_app.command("ack")
def alerts_ack(alert_id: int, output: OutputOption = Output.table) -> None:
    """Acknowledge an alert."""
    act(
        "POST", f"alerts/{alert_id}/acknowledge", lambda _: f"alert {alert_id} acknowledged", output
    )


RULE_COLUMNS = [
    Column("#", lambda r: str(r[0]), justify="right"),
    Column("rule", lambda r: r[1]["rule"]),
    Column("key", lambda r: r[1]["key"], flex=True),
    Column(
        "threshold",
        lambda r: "-" if r[1].get("threshold") is None else f"{r[1]['threshold']:g}",
        justify="right",
    ),
    Column("action", lambda r: r[1]["action"]),
]


def _print_rules(rules: list[dict[str, Any]]) -> None:
    print_table(RULE_COLUMNS, enumerate(rules))


@alerts_app.command("rules")
def alerts_rules(output: OutputOption = Output.table) -> None:
    """The platform's default rules: a job submitted without `alerts` gets a copy of them."""
    with client() as api:
        found = call(api.get, "alert-rules")

    def show(found: dict[str, Any]) -> None:
        if not found["items"]:
            console.print("no default rules (jobs get only the NaN-loss notify rule)")
            return
        _print_rules(found["items"])
        console.print(f"set {found['updated_at'][:19]}; jobs submitted later get a copy of these")

    emit(output, found, show)


@alerts_app.command("rules-set")
def alerts_rules_set(
    file: Annotated[
        Path,
        typer.Argument(help="JSON or YAML: a list of rules, or `items:` as `rules -o json` shows."),
    ],
) -> None:
    """Replace the platform's default rules (an empty list removes them)."""
    data = load_data_file(file)
    rules = data.get("items") if isinstance(data, dict) else data
    if not isinstance(rules, list):
        fail(f"{file}: give a list of rules (or a mapping with items: [...])", 2)
    with client() as api:
        stored = call(api.request, "PUT", "/api/v1/alert-rules", json={"items": rules})
    if stored["items"]:
        _print_rules(stored["items"])
    console.print(f"{len(stored['items'])} default rule(s) stored; they apply to new jobs")


@webhooks_app.command("add")
def webhooks_add(
    name: str,
    format: Annotated[str, typer.Option(help="json or slack.")] = "json",
    event: Annotated[
        list[str] | None,
        typer.Option(
            help="Repeatable: job.succeeded, job.failed, job.stalled, job.cancelled, alert."
        ),
    ] = None,
) -> None:
    """Register a webhook; its URL is read from stdin (it may hold a token)."""
    url = sys.stdin.readline().strip()
    if not url:
        fail("give the webhook's URL on stdin", 2)
    body: dict[str, Any] = {"name": name, "url": url, "format": format}
    if event:
        body["events"] = event
    with client() as api:
        made = call(api.request, "POST", "/api/v1/webhooks", json=body)
    console.print(f"webhook {made['name']} -> {made['url']} ({', '.join(made['events'])})")


WEBHOOK_COLUMNS = [
    Column("name", lambda h: h["name"]),
    Column("url", lambda h: h["url"], flex=True),
    Column("format", lambda h: h["format"], drop=3),
    Column("events", lambda h: ", ".join(h["events"]), drop=2, flex=True),
    Column("sent", lambda h: str(h["deliveries"]["sent"]), justify="right"),
    Column("pending", lambda h: str(h["deliveries"]["pending"]), drop=1, justify="right"),
    Column("failed", lambda h: str(h["deliveries"]["failed"]), justify="right"),
    Column("last error", lambda h: h["last_error"] or "-", flex=True),
]


@webhooks_app.command("list")
def webhooks_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Every webhook and how its deliveries went."""
    with client() as api:
        found = call(api.get, "webhooks")
    emit(output, found, lambda found: print_table(WEBHOOK_COLUMNS, found, wide=wide))


@webhooks_app.command("test")
def webhooks_test(name: str, output: OutputOption = Output.table) -> None:
    """Send a test notification now (exit 1 unless it was delivered)."""
    with client() as api:
        answer = call(api.request, "POST", f"/api/v1/webhooks/{name}/test")
    if not answer["delivered"] and output is Output.table:
        fail("not delivered" + (f": {answer['error']}" if answer.get("error") else ""))
    emit(output, answer, lambda sent: console.print(f"delivered (HTTP {sent['status_code']})"))
    if not answer["delivered"]:
        raise typer.Exit(1)


@webhooks_app.command("remove")
def webhooks_remove(name: str) -> None:
    """Forget a webhook."""
    act("DELETE", f"webhooks/{name}", lambda _: f"removed webhook {name}")
