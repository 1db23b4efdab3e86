"""`tp datasets`: upload (with a preview and versions), list, show, versions, diff, rows,
analyze, render, dedup and accept, search, delete."""

from __future__ import annotations

import time
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
    print_table,
    time_column,
)

datasets_app = typer.Typer(
    help="Datasets: upload, versions, statistics, samples with their loss mask.",
    no_args_is_help=True,
)


DATASET_COLUMNS = [
    Column("id", lambda d: str(d["id"]), justify="right"),
    Column("name", lambda d: d["name"], flex=True),
    Column("format", lambda d: d["format"]),
    Column("task", lambda d: str(d["task"]), drop=3),
    Column("rows", lambda d: str(d["rows"]), justify="right"),
    Column(
        "version",
        lambda d: str(d["version"]),
        drop=2,
        short=("v", lambda d: str(d["version"])),
        justify="right",
    ),
    Column("source", lambda d: d["source"], drop=4),
    Column("description", lambda d: d["description"], drop=1, flex=True),
]


@datasets_app.command("list")
def datasets_list(output: OutputOption = Output.table, wide: WideOption = False) -> None:
    """Datasets jobs can train on (the newest version of each)."""
    with client() as api:
        items = call(api.catalog, "datasets")
    emit(output, items, lambda items: print_table(DATASET_COLUMNS, items, wide=wide))


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl/.json/.parquet")
    ],
    name: Annotated[str | None, typer.Option(help="Name jobs will use.")] = None,
    format: Annotated[
        str | None, typer.Option(help="Detected from the first row if left out.")
    ] = None,
    description: Annotated[str, typer.Option()] = "",
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Add the file as NAME's next version.")
    ] = False,
    preview: Annotated[
        bool,
        typer.Option("--preview", help="Show the detected format and first rows; keep nothing."),
    ] = False,
    project: Annotated[
        str | None, typer.Option(help="The project a new dataset belongs to (default: default).")
    ] = None,
) -> None:
    """Upload a dataset; every row is checked, bad rows are reported by number."""
    params: dict[str, Any] = {"filename": file.name}
    if format:
        params["format"] = format
    if preview:
        with client() as api:
            shown = call(api.upload, "datasets/preview", file, **params)
        console.print(
            f"{shown['rows']} rows of {shown['format']} ({shown['task']} data), "
            f"detected by {shown['detected_by']}; {shown['bad_rows']} bad",
            highlight=False,
        )
        for problem in shown["errors"]:
            console.print(f"  row {problem['row']}: {problem['message']}", highlight=False)
        console.print_json(data=shown["preview"])
        return
    if not name:
        fail("--name is required (or --preview)")
    params |= {"name": name, "description": description}
    if new_version:
        params["new_version"] = "true"
    if project is not None:
        params["project"] = project
    with client() as api:
        item = call(api.upload, "datasets", file, **params)
    console.print(
        f"dataset {item['id']} {item['name']} version {item['version']}: {item['rows']} rows of "
        f"{item['format']} ({item['task']} data, detected by {item['detected_by']}), "
        f"sha256 {item['sha256'][:12]}",
        highlight=False,
    )


@datasets_app.command("show")
def datasets_show(ref: str, output: OutputOption = Output.table) -> None:
    """Show one dataset (by name or id): its fields, one a line."""
    with client() as api:
        found = call(api.get, f"datasets/{ref}")
    emit(output, found, _print_fields)


def _print_fields(record: dict[str, Any]) -> None:
    import json

    width = max(map(len, record), default=0)
    for key, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        console.print(f"{key:>{width}}: {text}", highlight=False, markup=False)


VERSION_COLUMNS = [
    Column("version", lambda v: str(v["number"])),
    Column("rows", lambda v: str(v["rows"]), justify="right"),
    Column("format", lambda v: v["format"]),
    Column("origin", lambda v: v["origin"], flex=True),
    Column("parent", lambda v: str(v["parent"] or ""), drop=2, justify="right"),
    Column("sha256", lambda v: v["sha256"][:12], drop=1),
    time_column("created", "created_at"),
]


@datasets_app.command("versions")
def datasets_versions(
    ref: str, output: OutputOption = Output.table, wide: WideOption = False
) -> None:
    """The versions of a dataset, newest first (jobs name one as NAME@N)."""
    with client() as api:
        items = call(api.get, f"datasets/{ref}/versions")
    emit(output, items, lambda items: print_table(VERSION_COLUMNS, items, wide=wide))


@datasets_app.command("diff")
def datasets_diff(
    ref: str,
    base: Annotated[int, typer.Option(help="The older version.")],
    other: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    output: OutputOption = Output.table,
) -> None:
    """Rows added and removed between two versions."""
    path = f"datasets/{ref}/diff?base={base}" + (f"&other={other}" if other else "")
    with client() as api:
        diff = call(api.get, path)
    emit(output, diff, _print_diff)


def _print_diff(diff: dict[str, Any]) -> None:
    console.print(
        f"version {diff['base']} -> {diff['other']}: +{diff['added']} -{diff['removed']} "
        f"({diff['unchanged']} unchanged)",
        highlight=False,
    )
    for sign, rows in (("+", diff["added_rows"]), ("-", diff["removed_rows"])):
        for row in rows:
            console.print(f"{sign} row {row['row']}: {row['data']}", highlight=False)


@datasets_app.command("rows")
def datasets_rows(
    ref: str,
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 10,
    search: Annotated[str, typer.Option(help="Only rows whose text contains this.")] = "",
    output: OutputOption = Output.table,
) -> None:
    """Page through a version's rows, or search them for a text."""
    params: dict[str, Any] = {"offset": offset, "limit": limit, "q": search}
    if version is not None:
        params["version"] = version
    with client() as api:
        page = call(api.request, "GET", f"/api/v1/datasets/{ref}/rows", params=params)

    def show(page: dict[str, Any]) -> None:
        console.print(f"{page['total']} rows (version {page['version']})", highlight=False)
        for row in page["rows"]:
            console.print(f"row {row['row']}: {row['data']}", highlight=False)

    emit(output, page, show)


def _print_histogram(title: str, histogram: dict[str, Any], unit: str) -> None:
    if not histogram.get("n"):
        console.print(f"{title}: no data", highlight=False)
        return
    console.print(
        f"{title} ({unit}): n {histogram['n']}, min {histogram['min']:g}, "
        f"p50 {histogram['p50']:g}, p95 {histogram['p95']:g}, max {histogram['max']:g}",
        highlight=False,
    )


@datasets_app.command("analyze")
def datasets_analyze(
    ref: str,
    model: Annotated[
        str | None, typer.Option(help="Measure in this model's tokens (chat template included).")
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Report rows longer than this.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="A field to count values of.")] = None,
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    bins: Annotated[int, typer.Option(min=1, max=200)] = 20,
    wait: Annotated[bool, typer.Option(help="Wait for the worker and print the result.")] = True,
    output: OutputOption = Output.table,
) -> None:
    """Statistics of a version, computed on the preprocessing queue."""
    body: dict[str, Any] = {"bins": bins, "label_fields": label or []}
    for key, value in (("model", model), ("max_length", max_length), ("version", version)):
        if value is not None:
            body[key] = value
    with client() as api:
        found = call(api.request, "POST", f"/api/v1/datasets/{ref}/analyses", json=body)
        deadline = time.monotonic() + 600
        while wait and found["status"] in ("pending", "running"):
            if time.monotonic() > deadline:
                fail(f"analysis {found['id']} is still {found['status']}")
            time.sleep(0.5)
            found = call(api.get, f"datasets/{ref}/analyses/{found['id']}")
    if not wait:
        emit(
            output,
            found,
            lambda found: console.print(
                f"analysis {found['id']}: {found['status']}", highlight=False
            ),
        )
        return
    if found["status"] != "succeeded":
        fail(f"analysis {found['id']} failed: {found['error']}")
    emit(output, found, _print_analysis)


def _print_analysis(found: dict[str, Any]) -> None:
    result = found["result"]
    console.print(
        f"analysis {found['id']} of {found['dataset']}@{found['version']}: {result['rows']} rows "
        f"of {result['format']}; exact duplicates {result['duplicates']['exact_rows']}",
        highlight=False,
    )
    for name, field in result["fields"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in field["types"].items())
        console.print(
            f"  field {name}: {kinds}; missing {field['missing']}, empty {field['empty']}",
            highlight=False,
        )
    _print_histogram("length", result["lengths"]["total"], result["unit"])
    for role, histogram in result["lengths"]["roles"].items():
        _print_histogram(f"  {role} turns", histogram, result["unit"])
    if "truncation" in result:
        cut = result["truncation"]
        console.print(
            f"longer than {cut['max_length']}: {cut['rows']} rows ({cut['share']:.1%})",
            highlight=False,
        )
    for name, counts in result["labels"].items():
        shares = ", ".join(f"{v['value']} {v['share']:.1%}" for v in counts["values"][:10])
        console.print(f"label {name}: {shares}", highlight=False)
    if "preference_bias" in result:
        bias = result["preference_bias"]
        _print_histogram("chosen - rejected", bias["chosen_minus_rejected"], result["unit"])
        console.print(f"chosen longer in {bias['chosen_longer_share']:.1%}", highlight=False)


@datasets_app.command("render")
def datasets_render(
    ref: str,
    row: Annotated[int, typer.Argument(help="The row's number (its line in a JSONL file).")],
    model: Annotated[str, typer.Option(help="Whose chat template renders it.")],
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    assistant_only_loss: Annotated[bool, typer.Option()] = True,
    max_length: Annotated[int | None, typer.Option()] = None,
) -> None:
    """One row as the trainer sees it; the tokens that count toward the loss in green."""
    params: dict[str, Any] = {"model": model, "assistant_only_loss": assistant_only_loss}
    if version is not None:
        params["version"] = version
    if max_length is not None:
        params["max_length"] = max_length
    with client() as api:
        sample = call(
            api.request, "GET", f"/api/v1/datasets/{ref}/rows/{row}/render", params=params
        )
    for segment in sample["segments"]:
        style = "green" if segment["loss"] else "dim"
        if segment["truncated"]:
            style += " strike"
        console.print(segment["text"], style=style, end="", markup=False, highlight=False)
    console.print()
    console.print(
        f"{sample['loss_tokens']} of {sample['tokens']} tokens count toward the loss: "
        f"{sample['note']}",
        highlight=False,
    )


@datasets_app.command("dedup")
def datasets_dedup(
    ref: str,
    stages: Annotated[str, typer.Option(help="Comma-separated: exact, near, semantic.")] = (
        "exact,near,semantic"
    ),
    near_threshold: Annotated[float, typer.Option(help="MinHash Jaccard of 5-grams.")] = 0.8,
    semantic_threshold: Annotated[float, typer.Option(help="MiniLM cosine similarity.")] = 0.9,
    against: Annotated[
        str | None, typer.Option(help="Report the rows that match another dataset instead.")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    show: Annotated[int, typer.Option(help="Clusters to print.")] = 20,
) -> None:
    """Find duplicates on a worker and print the review; nothing is written until
    `tp datasets accept`."""
    body: dict[str, Any] = {
        "stages": [s.strip() for s in stages.split(",") if s.strip()],
        "near_threshold": near_threshold,
        "semantic_threshold": semantic_threshold,
    }
    if against is not None:
        body["against"] = against
    if version is not None:
        body["version"] = version
    with client() as api:
        found = call(api.request, "POST", f"/api/v1/datasets/{ref}/dedups", json=body)
        deadline = time.monotonic() + 3600
        while found["status"] in ("pending", "running"):
            if time.monotonic() > deadline:
                fail(f"dedup {found['id']} is still {found['status']}")
            time.sleep(0.5)
            found = call(api.get, f"datasets/{ref}/dedups/{found['id']}")
    if found["status"] != "review":
        fail(f"dedup {found['id']} {found['status']}: {found['error']}")
    review = found["review"]
    stages_found = ", ".join(
        f"{stage} {c['dropped']} in {c['clusters']} clusters"
        for stage, c in review["stages"].items()
    )
    console.print(
        f"dedup {found['id']} of {found['dataset']}@{found['version']}: {review['rows']} rows, "
        f"{review['dropped']} to drop ({stages_found})",
        highlight=False,
    )
    for cluster in review["clusters"][:show]:
        kept = cluster["kept"]
        where = "the other dataset's row" if kept["against"] else "keep row"
        console.print(
            f"[{cluster['stage']}] {where} {kept['row']}: {kept['text']!r}", highlight=False
        )
        for row in cluster["dropped"]:
            console.print(
                f"    drop row {row['row']} ({row['similarity']:.3f}): {row['text']!r}",
                highlight=False,
            )
    if review["dropped"]:
        console.print(f"accept with: tp datasets accept {ref} {found['id']}", highlight=False)


@datasets_app.command("accept")
def datasets_accept(
    ref: str,
    dedup_id: int,
    note: Annotated[str, typer.Option(help="Kept in the new version's manifest.")] = "",
) -> None:
    """Accept a dedup's review: write the version without the dropped rows."""
    with client() as api:
        version = call(
            api.request,
            "POST",
            f"/api/v1/datasets/{ref}/dedups/{dedup_id}/accept",
            params={"note": note},
        )
    console.print(
        f"{ref} version {version['number']}: {version['rows']} rows "
        f"({version['manifest']['dedup']['dropped']} dropped)",
        highlight=False,
    )


@datasets_app.command("search")
def datasets_search(
    ref: str,
    query: Annotated[str | None, typer.Argument(help="A text to find rows like.")] = None,
    row: Annotated[int | None, typer.Option(help="Find rows like this row instead.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 10,
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    output: OutputOption = Output.table,
) -> None:
    """Rows like a text or a row (MiniLM embeddings in the vector store)."""
    if (query is None) == (row is None):
        fail("give a query text or --row, not both")
    body: dict[str, Any] = {"limit": limit, "query": query, "row": row}
    if version is not None:
        body["version"] = version
    with client() as api:
        # a worker answers; its first search of a version embeds it (the API waits up to 180 s)
        found = call(api.request, "POST", f"/api/v1/datasets/{ref}/search", json=body, timeout=200)

    def show(found: dict[str, Any]) -> None:
        for hit in found["hits"]:
            console.print(f"{hit['score']:.3f} row {hit['row']}: {hit['data']}", highlight=False)

    emit(output, found, show)


@datasets_app.command("delete")
def datasets_delete(ref: str) -> None:
    """Delete an uploaded dataset (every version) that no job uses."""
    act("DELETE", f"datasets/{ref}", lambda _: f"dataset {ref} deleted")
