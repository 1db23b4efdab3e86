"""What every `tp` command group shares: the consoles, errors, and the API client."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

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


# --- what list, show and action commands print ---------------------------------------------


class Output(StrEnum):
    """How a command prints what the API answered."""

    table = "table"
    json = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="table (for people) or json (the API's answer as it came, for scripts).",
        case_sensitive=False,
    ),
]
WideOption = Annotated[
    bool, typer.Option("--wide", help="Every column, however narrow the terminal.")
]


def print_json(data: Any) -> None:
    """The API's answer as JSON on stdout: no markup, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit(output: Output, data: Any, show: Callable[[Any], object]) -> None:
    """Print an answer: as JSON with `--output json`, else the way `show` prints it."""
    if output is Output.json:
        print_json(data)
    else:
        show(data)


def act(
    method: str,
    path: str,
    done: Callable[[Any], str],
    output: Output = Output.table,
    **request: Any,
) -> Any:
    """Call an action (cancel, pause, ack, remove, ...) and print one line on what it did, or
    the API's answer with `--output json`; the answer is returned."""
    with client() as api:
        answer = call(api.request, method, f"/api/v1/{path}", **request)
    emit(output, answer, lambda found: console.print(done(found), highlight=False, markup=False))
    return answer


@dataclass(frozen=True)
class Column:
    """A table column: its header and cell, and how it gives way on a narrow terminal."""

    header: str
    cell: Callable[[Any], str]
    # 0: always shown; otherwise dropped when the terminal is too narrow, the highest first
    drop: int = 0
    # a narrower (header, cell), used before any column is dropped
    short: tuple[str, Callable[[Any], str]] | None = None
    # free text (names, messages): may wrap onto more lines; other cells are never cut
    flex: bool = False
    style: Callable[[Any], str] | None = None
    justify: Literal["left", "right"] = "left"


FLEX_MIN = 16  # the width a free-text column may be narrowed to before columns are dropped


def short_time(stamp: str | None) -> str:
    """An API timestamp as MM-DD HH:MM (narrow tables)."""
    return stamp[5:16].replace("T", " ") if stamp else "-"


def full_time(stamp: str | None) -> str:
    """An API timestamp as YYYY-MM-DD HH:MM:SS."""
    return stamp[:19].replace("T", " ") if stamp else "-"


def time_column(header: str, key: str, *, drop: int = 0) -> Column:
    """A timestamp column: in full, or MM-DD HH:MM when the terminal is narrow."""
    return Column(
        header,
        lambda row: full_time(row[key]),
        drop=drop,
        short=(header, lambda row: short_time(row[key])),
    )


def _cell_text(value: Any) -> str:
    """What a cell shows: "-" where the API has no value (a serve job's dataset)."""
    return "-" if value is None else str(value)


def print_table(
    columns: list[Column], rows: Iterable[Any], *, wide: bool = False, title: str | None = None
) -> None:
    """Rows as a table that fits the terminal: when it would not, the narrower forms of columns
    are used, then the least useful columns are dropped, and free text wraps; no cell is cut.
    With `wide`, every column in full, however long the lines."""
    rows = list(rows)
    forms = [(c.header, c.cell) for c in columns]
    cells = [[_cell_text(form[1](row)) for row in rows] for form in forms]
    shown = list(range(len(columns)))

    def natural(index: int) -> int:
        return max([cell_len(forms[index][0]), *map(cell_len, cells[index])])

    def needed() -> int:
        floors = [min(natural(i), FLEX_MIN) if columns[i].flex else natural(i) for i in shown]
        return sum(floors) + 3 * len(shown) + 1  # a space either side, a rule between

    if not wide and needed() > console.width:
        for i, column in enumerate(columns):  # every narrower form at once: alike columns agree
            if column.short:
                forms[i] = column.short
                cells[i] = [_cell_text(column.short[1](row)) for row in rows]
        for i in sorted(
            (i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop
        ):
            if needed() <= console.width:
                break
            shown.remove(i)
    table = Table(title=title)
    if wide:
        table.width = sum(natural(i) for i in shown) + 3 * len(shown) + 1
    for i in shown:
        column = columns[i]
        table.add_column(
            forms[i][0],
            justify=column.justify,
            no_wrap=not column.flex,
            overflow="fold",
            min_width=None if column.flex else natural(i),
        )
    styles = [column.style or (lambda _: "") for column in columns]
    for r, row in enumerate(rows):
        table.add_row(*(Text(cells[i][r], style=styles[i](row)) for i in shown))
    console.print(table, crop=not wide)
