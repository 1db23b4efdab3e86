"""`tp alerts` and `tp webhooks`: the alerts jobs' rules raised and the platform's default
rules; where notifications go."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from training_platform.cli.common import call, client, console, fail, load_data_file

alerts_app = typer.Typer(help="Alerts raised by jobs' rules.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Where notifications go (JSON or Slack).", no_args_is_help=True)


@alerts_app.command("list")
def alerts_list(
    job: Annotated[int | None, typer.Option(help="Only this job's alerts.")] = None,
    unacknowledged: Annotated[bool, typer.Option(help="Only those nobody acknowledged.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Alerts, newest first."""
    params: dict[str, Any] = {"unacknowledged": unacknowledged}
    if job is not None:
        params["job_id"] = job
    with client() as api:
        found = call(api.request, "GET", "/api/v1/alerts", params=params)
    if as_json:
        console.print_json(data=found)
        return
    if not found:
        console.print("no alerts")
        return
    table = Table("id", "job", "when", "severity", "message", "action", "acknowledged")
    for alert in found:
        table.add_row(
            str(alert["id"]),
            str(alert["job_id"]),
            alert["created_at"][:19],
            alert["severity"],
            alert["message"],
            f"{alert['action']}: {alert['action_result']}",
            alert["acknowledged_by"] or "-",
        )
    console.print(table)


@alerts_app.command("ack")
def alerts_ack(alert_id: int) -> None:
    """Acknowledge an alert."""
    with client() as api:
        call(api.request, "POST", f"/api/v1/alerts/{alert_id}/acknowledge")
    console.print(f"alert {alert_id} acknowledged")


def _print_rules(rules: list[dict[str, Any]]) -> None:
    table = Table("#", "rule", "key", "threshold", "action")
    for index, rule in enumerate(rules):
        threshold = rule.get("threshold")
        table.add_row(
            str(index),
            rule["rule"],
            rule["key"],
            "-" if threshold is None else f"{threshold:g}",
            rule["action"],
        )
    console.print(table)


@alerts_app.command("rules")
def alerts_rules(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The platform's default rules: a job submitted without `alerts` gets a copy of them."""
    with client() as api:
        found = call(api.get, "alert-rules")
    if as_json:
        console.print_json(data=found)
        return
    if not found["items"]:
        console.print("no default rules (jobs get only the NaN-loss notify rule)")
        return
    _print_rules(found["items"])
    console.print(f"set {found['updated_at'][:19]}; jobs submitted later get a copy of these")


@alerts_app.command("rules-set")
def alerts_rules_set(
    file: Annotated[
        Path,
        typer.Argument(help="JSON or YAML: a list of rules, or `items:` as `rules --json` shows."),
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


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Every webhook and how its deliveries went."""
    with client() as api:
        found = call(api.get, "webhooks")
    table = Table("name", "url", "format", "events", "sent", "pending", "failed", "last error")
    for hook in found:
        counts = hook["deliveries"]
        table.add_row(
            hook["name"],
            hook["url"],
            hook["format"],
            ", ".join(hook["events"]),
            str(counts["sent"]),
            str(counts["pending"]),
            str(counts["failed"]),
            hook["last_error"] or "-",
        )
    console.print(table)


@webhooks_app.command("test")
def webhooks_test(name: str) -> None:
    """Send a test notification now."""
    with client() as api:
        answer = call(api.request, "POST", f"/api/v1/webhooks/{name}/test")
    if not answer["delivered"]:
        fail("not delivered" + (f": {answer['error']}" if answer.get("error") else ""))
    console.print(f"delivered (HTTP {answer['status_code']})")


@webhooks_app.command("remove")
def webhooks_remove(name: str) -> None:
    """Forget a webhook."""
    with client() as api:
        call(api.delete, f"webhooks/{name}")
    console.print(f"removed webhook {name}")
