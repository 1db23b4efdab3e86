"""`tp merge` and `tp models soup|select|lineage`: model surgery from the command line."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

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

merge_app = typer.Typer(
    help="Merge models with mergekit (checked first, run as a job, registered with lineage).",
    no_args_is_help=True,
)

PER_MODEL = ("weight", "density", "gamma", "epsilon")
SHARED_BOOLS = ("normalize", "rescale", "int8_mask", "filter_wise")
SHARED_NUMBERS = ("t", "lambda")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        fail(f"{what}: {text!r} is not a number")


def model_ref(text: str, what: str) -> dict[str, Any]:
    """A model as the API takes it: NAME or ID, job:N (its final model), job:N:STEP."""
    parts = text.split(":")
    if parts[0] == "job":
        if len(parts) == 2 and parts[1].isdigit():
            return {"job": int(parts[1])}
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return {"checkpoint": {"job": int(parts[1]), "step": int(parts[2])}}
        fail(f"{what} {text!r}: give job:N or job:N:STEP")
    if len(parts) != 1 or not text:
        fail(f"{what} {text!r}: give a model name or id, job:N or job:N:STEP")
    return {"model": int(text) if text.isdigit() else text}


def model_spec(text: str) -> dict[str, Any]:
    """--model REF[@weight=W,density=D,...]."""
    ref, _, options = text.partition("@")
    item = model_ref(ref, "--model")
    for option in filter(None, options.split(",")):
        key, sep, value = option.partition("=")
        if not sep or key not in PER_MODEL:
            fail(f"--model {text!r}: options are {', '.join(PER_MODEL)} as key=value")
        item[key] = _number(value, f"--model {key}")
    return item


def shared_parameters(pairs: list[str]) -> dict[str, Any]:
    """--param t=0.5 --param normalize=false."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--param {pair!r}: give key=value")
        if key in SHARED_BOOLS:
            if value.lower() not in ("true", "false"):
                fail(f"--param {key}: give true or false, not {value!r}")
            found[key] = value.lower() == "true"
        elif key in SHARED_NUMBERS:
            found[key] = _number(value, f"--param {key}")
        else:
            fail(f"--param {key!r}: one of {', '.join((*SHARED_NUMBERS, *SHARED_BOOLS))}")
    return found


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _print_merge(merge: dict[str, Any]) -> None:
    console.print(
        f"{merge['kind']} {merge['id']} {merge['name']}: [bold]{merge['status']}[/bold]"
        f"  {merge['method']}  (job {merge['job_id']})",
        highlight=False,
    )
    for row in merge["inputs"]:
        extras = ", ".join(f"{k} {row[k]}" for k in PER_MODEL if row.get(k) is not None)
        adapter = f", adapter of {row['adapter_of']}" if row.get("adapter_of") else ""
        console.print(
            f"  {row['role']}: {row['name']}{adapter}{'  ' + extras if extras else ''}",
            highlight=False,
        )
    if merge["error"]:
        console.print(f"  error: {merge['error']}", highlight=False)


def _print_estimate(preview: dict[str, Any]) -> None:
    estimate = preview["estimate"]
    console.print(
        f"fits together ({', '.join(preview['checked'])})\n"
        f"estimate: {estimate['parameters']:,} parameters, reads {_size(estimate['input_bytes'])}, "
        f"writes {_size(estimate['disk_bytes'])}, peak memory {_size(estimate['ram_bytes'])}, "
        f"takes {estimate['time_class']}",
        highlight=False,
    )


def _wait(api: Any, merge: dict[str, Any]) -> dict[str, Any]:
    while merge["status"] == "pending":
        time.sleep(1)
        merge = call(api.get, f"merges/{merge['id']}")
    return merge


@merge_app.command("run")
def merge_run(
    name: Annotated[str, typer.Argument(help="The merged model's catalog name.")],
    method: Annotated[
        str, typer.Option(help="linear, slerp, ties, dare_ties, ... (tp merge methods)")
    ],
    model: Annotated[
        list[str],
        typer.Option(help="REF[@weight=W,density=D]; REF: a name or id, job:N or job:N:STEP."),
    ],
    base: Annotated[
        str | None, typer.Option(help="The base model (every method but linear).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="A global parameter: t=0.5, lambda=1, normalize=false.")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    tokenizer: Annotated[str, typer.Option(help="base or union.")] = "base",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    description: Annotated[str, typer.Option()] = "",
    preview: Annotated[
        bool, typer.Option("--preview", help="Check and estimate only; run nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the model is registered.")
    ] = False,
    project: Annotated[
        str | None, typer.Option(help="The project it belongs to (default: default).")
    ] = None,
) -> None:
    """Merge models: refused with the reason when they do not fit together."""
    body: dict[str, Any] = {
        "name": name,
        "method": method,
        "models": [model_spec(m) for m in model],
        "parameters": shared_parameters(param or []),
        "dtype": dtype,
        "tokenizer": tokenizer,
        "seed": seed,
        "description": description,
    }
    if base is not None:
        body["base"] = model_ref(base, "--base")
    if project is not None:
        body["project"] = project
    with client() as api:
        if preview:
            _print_estimate(call(api.request, "POST", "/api/v1/merges/preview", json=body))
            return
        merge = call(api.request, "POST", "/api/v1/merges", json=body)
        console.print(f"merge {merge['id']} submitted (job {merge['job_id']})", highlight=False)
        if not wait:
            return
        merge = _wait(api, merge)
    _print_merge(merge)
    if merge["status"] != "succeeded":
        raise typer.Exit(1)


MERGE_COLUMNS = [
    Column("id", lambda m: str(m["id"]), justify="right"),
    Column("name", lambda m: m["name"], flex=True),
    Column("kind", lambda m: m["kind"], drop=2),
    Column("method", lambda m: m["method"]),
    Column("status", lambda m: m["status"]),
    Column("job", lambda m: str(m["job_id"]), drop=1, justify="right"),
    Column("parents", lambda m: ", ".join(str(i["name"]) for i in m["inputs"]), flex=True),
]


@merge_app.command("list")
def merge_list(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """Merges and soups, newest first."""
    with client() as api:
        rows = call(api.request, "GET", "/api/v1/merges", params={"limit": limit})

    def show(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print("no merges yet")
            return
        print_table(MERGE_COLUMNS, rows, wide=wide)

    emit(output, rows, show)


@merge_app.command("show")
def merge_show(merge_id: int, output: OutputOption = Output.table) -> None:
    """One merge or soup: its parents, status and estimate."""
    with client() as api:
        merge = call(api.get, f"merges/{merge_id}")

    def show(merge: dict[str, Any]) -> None:
        _print_merge(merge)
        _print_estimate({"estimate": merge["estimate"], "checked": ["when submitted"]})

    emit(output, merge, show)


def _starred(names: list[str], required: list[str]) -> str:
    return ", ".join(f"{n}{'*' if n in required else ''}" for n in names)


METHOD_COLUMNS = [
    Column("method", lambda m: m["method"]),
    Column("base", lambda m: "needed" if m["needs_base"] else "no"),
    Column(
        "models",
        lambda m: (
            str(m["models"][0])
            if m["models"][0] == m["models"][1]
            else f"{m['models'][0]}-{m['models'][1]}"
        ),
    ),
    Column("per model", lambda m: _starred(m["per_model"], m["required"]), flex=True),
    Column("parameters", lambda m: _starred(m["parameters"], m["required_parameters"]), flex=True),
]


@merge_app.command("methods")
def merge_methods(output: OutputOption = Output.table) -> None:
    """The merge methods and what each takes."""
    with client() as api:
        rows = call(api.get, "merges/methods")

    def show(rows: list[dict[str, Any]]) -> None:
        print_table(METHOD_COLUMNS, rows)
        console.print("* required", highlight=False)

    emit(output, rows, show)


def models_soup(
    name: Annotated[str, typer.Argument(help="The soup's catalog name.")],
    job: Annotated[int, typer.Option(help="The job whose checkpoints to average.")],
    steps: Annotated[str | None, typer.Option(help="These steps, comma-separated.")] = None,
    last: Annotated[int | None, typer.Option(min=2, help="Or: the last K checkpoints.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is registered.")] = False,
    greedy_on: Annotated[
        str | None,
        typer.Option(help="Greedy: evaluate on this dataset, add checkpoints while it helps."),
    ] = None,
    scorer: Annotated[str, typer.Option(help="With --greedy-on.")] = "numeric",
    max_samples: Annotated[int | None, typer.Option(min=1, help="With --greedy-on.")] = None,
) -> None:
    """A soup of a job's checkpoints: their mean (uniform), or with --greedy-on a greedy soup
    (each evaluated, then added best first while the soup's score does not drop)."""
    body: dict[str, Any] = {"name": name, "job": job}
    if steps is not None:
        try:
            body["steps"] = [int(s) for s in steps.split(",")]
        except ValueError:
            fail(f"--steps {steps!r}: give whole numbers separated by commas")
    if last is not None:
        body["last"] = last
    if greedy_on is not None:
        body["evaluate"] = {
            "dataset": greedy_on,
            "scorer": scorer,
            "generation": {"max_samples": max_samples},
        }
        _greedy(body, wait)
        return
    with client() as api:
        merge = call(api.request, "POST", "/api/v1/models/soup", json=body)
        console.print(f"soup {merge['id']} submitted (job {merge['job_id']})", highlight=False)
        if not wait:
            return
        merge = _wait(api, merge)
    _print_merge(merge)
    if merge["status"] != "succeeded":
        raise typer.Exit(1)


def _greedy(body: dict[str, Any], wait: bool) -> None:
    with client() as api:
        soup = call(api.request, "POST", "/api/v1/merges/greedy-soups", json=body)
        console.print(f"greedy soup {soup['id']} submitted", highlight=False)
        if not wait:
            return
        while soup["status"] == "pending":
            time.sleep(1)
            soup = call(api.get, f"merges/greedy-soups/{soup['id']}")
    state = soup["state"]
    for single in state.get("singles", []):
        console.print(f"  step {single['step']}: {single['score']}", highlight=False)
    for trial in state.get("trials", []):
        verdict = "kept" if trial["kept"] else "left out"
        console.print(f"  + step {trial['step']}: {trial['score']} ({verdict})", highlight=False)
    console.print(
        f"greedy soup {soup['name']}: {soup['status']}, steps {state.get('soup')}"
        + (f" ({soup['error']})" if soup["error"] else ""),
        highlight=False,
    )
    if soup["status"] != "succeeded":
        raise typer.Exit(1)


def models_select(
    name: Annotated[str, typer.Argument(help="The chosen checkpoint's catalog name.")],
    job: Annotated[int, typer.Option(help="The job whose checkpoints compete.")],
    mode: Annotated[str, typer.Option(help="min or max: which is better.")],
    metric: Annotated[str | None, typer.Option(help="A metric the job logged, e.g. loss.")] = None,
    evaluations: Annotated[
        str | None, typer.Option(help="Or: evaluations of its checkpoints, comma-separated ids.")
    ] = None,
    scorer: Annotated[str | None, typer.Option(help="With --evaluations.")] = None,
) -> None:
    """Register a job's best checkpoint by a declared rule (ties go to the earlier step)."""
    body: dict[str, Any] = {"name": name, "job": job, "mode": mode}
    if metric is not None:
        body["metric"] = metric
    if evaluations is not None:
        try:
            body["evaluations"] = [int(e) for e in evaluations.split(",")]
        except ValueError:
            fail(f"--evaluations {evaluations!r}: give ids separated by commas")
    if scorer is not None:
        body["scorer"] = scorer
    with client() as api:
        chosen = call(api.request, "POST", "/api/v1/models/select", json=body)
    table = Table("step", "value", "evaluation")
    for candidate in chosen["candidates"]:
        value = candidate["value"]
        table.add_row(
            str(candidate["step"]),
            "-" if value is None else f"{value:.6g}",
            str(candidate.get("evaluation_id") or ""),
        )
    console.print(table)
    console.print(
        f"registered {chosen['name']} (model {chosen['model_id']}): step {chosen['step']}, "
        f"{chosen['rule']} = {chosen['value']:.6g}",
        highlight=False,
    )


def models_lineage(
    ref: Annotated[str, typer.Argument(help="A model name or id.")],
    output: OutputOption = Output.table,
) -> None:
    """Where a model came from: merges, soups, selections and the jobs that trained it."""
    with client() as api:
        lineage = call(api.get, f"models/{ref}/lineage")
    emit(output, lineage, _print_model_lineage)


def _print_model_lineage(lineage: dict[str, Any]) -> None:
    names = {node["id"]: node["name"] for node in lineage["nodes"]}
    parents: dict[int, list[dict[str, Any]]] = {}
    for edge in lineage["edges"]:
        parents.setdefault(edge["child"], []).append(edge)

    def show(model_id: int, depth: int, seen: set[int]) -> None:
        for edge in parents.get(model_id, []):
            detail = ", ".join(f"{k} {v}" for k, v in edge["detail"].items())
            console.print(
                f"{'  ' * depth}<- {edge['relation']}: {names.get(edge['parent'], edge['parent'])}"
                + (f"  ({detail})" if detail else ""),
                highlight=False,
            )
            if edge["parent"] not in seen:
                show(edge["parent"], depth + 1, seen | {edge["parent"]})

    console.print(names[lineage["model_id"]], highlight=False)
    show(lineage["model_id"], 1, {lineage["model_id"]})
