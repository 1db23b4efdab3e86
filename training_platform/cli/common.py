"""What every `tp` command group shares: the consoles, errors, and the API client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from training_platform.cli.client import ApiClient, ApiError
from training_platform.core.settings import Settings, SettingsError, load_settings

console = Console()
err = Console(stderr=True, soft_wrap=True)

# How a job's, a pipeline's or a stage's status is coloured in tables.
STATUS_STYLE = {
    "queued": "cyan",
    "starting": "cyan",
    "running": "blue",
    "resuming": "cyan",
    "stalled": "magenta",
    "pausing": "yellow",
    "paused": "yellow",
    "stopping": "yellow",
    "cancelling": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "pending": "dim",
    "skipped": "dim",
}


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error and exit non-zero."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """Settings, or a clear message naming the bad TP_* variable."""
    try:
        return load_settings()
    except SettingsError as error:
        fail(str(error), 2)


def client() -> ApiClient:
    """An API client from the settings."""
    return ApiClient.from_settings(settings_or_exit())


def call(action: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call, turning API errors into messages and exit codes."""
    try:
        return action(*args, **kwargs)
    except ApiError as error:
        fail(error.message, 2 if error.status in (400, 422) else 1)


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`, with the value read as JSON when it parses (numbers, booleans)."""
    if "=" not in text:
        raise typer.BadParameter(f"{text!r} is not key=value")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def catalog_ref(value: str) -> int | str:
    """A catalog reference as typed: an id when it is all digits, else a name."""
    return int(value) if value.isdigit() else value


def load_data_file(path: Path) -> Any:
    """The content of a JSON or YAML file (YAML by its .yaml or .yml suffix)."""
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as error:
        fail(f"{path}: cannot parse: {error}", 2)
