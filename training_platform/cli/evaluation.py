"""`tp eval`: evaluate a model, show its result, re-score it, compare two evaluations."""

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
    print_json,
    print_table,
)

eval_app = typer.Typer(
    help="Evaluations: run, show, rescore, compare (generations are stored once).",
    no_args_is_help=True,
)


def _score_line(spec: str, summary: dict[str, Any]) -> str:
    if summary.get("mean") is None:
        return f"{spec}: no samples"
    interval = ""
    if summary.get("ci_low") is not None:
        interval = (
            f"  95% [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}] ({summary['interval']})"
        )
    stderr = f" ± {summary['stderr']:.4f}" if summary.get("stderr") is not None else ""
    return f"{spec}: {summary['mean']:.4f}{stderr}{interval}  n={summary['n']}"


def _print(evaluation: dict[str, Any]) -> None:
    engine = evaluation["engine_used"] or evaluation["engine"]
    console.print(
        f"evaluation {evaluation['id']} {evaluation['name']}: [bold]{evaluation['status']}[/bold]"
        f"  model {evaluation['model']} on {evaluation['dataset']}"
        f"  (job {evaluation['job_id']}, engine {engine})",
        highlight=False,
    )
    if evaluation["error"]:
        console.print(f"  error: {evaluation['error']}", highlight=False)
    for spec, summary in evaluation["summary"].items():
        console.print(f"  {_score_line(spec, summary)}", highlight=False)
    for scoring in evaluation.get("scorings", []):
        if scoring["status"] != "succeeded":
            error = f": {scoring['error']}" if scoring["error"] else ""
            console.print(
                f"  {scoring['scorer']}: {scoring['status']} on a worker "
                f"({scoring['done']} scored){error}",
                highlight=False,
            )


@eval_app.command("run")
def eval_run(
    name: str,
    dataset: Annotated[str, typer.Option(help="A prompt/answer dataset, by name or id.")],
    model: Annotated[str | None, typer.Option(help="A registered model.")] = None,
    job: Annotated[int | None, typer.Option(help="Or: the final model of this job.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="Or: a job's checkpoint, as JOB:STEP (e.g. 12:200).")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Or: an endpoint, by name (the api engine).")
    ] = None,
    scorer: Annotated[
        str, typer.Option(help="exact, numeric, ..., regex:PATTERN, pass@K:SCORER")
    ] = "numeric",
    max_samples: Annotated[int | None, typer.Option(min=1)] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    engine: Annotated[str, typer.Option(help="auto, transformers, vllm or api.")] = "auto",
    temperature: Annotated[float, typer.Option(min=0, max=2, help="0: greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    n: Annotated[
        int, typer.Option("--n", min=1, max=64, help="Completions per prompt (for pass@K).")
    ] = 1,
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    project: Annotated[
        str | None, typer.Option(help="The project it belongs to (default: default).")
    ] = None,
) -> None:
    """Evaluate a model (a job's final model, a checkpoint, or an endpoint) on a dataset;
    --wait prints its result."""
    body: dict[str, Any] = {
        "name": name,
        "dataset": int(dataset) if dataset.isdigit() else dataset,
        "scorer": scorer,
        "generation": {
            "max_samples": max_samples,
            "max_new_tokens": max_new_tokens,
            "engine": engine,
            "temperature": temperature,
            "seed": seed,
            "n": n,
        },
        "resources": {"gpus": gpus},
    }
    if project is not None:
        body["project"] = project
    if model is not None:
        body["model"] = int(model) if model.isdigit() else model
    if job is not None:
        body["job"] = job
    if endpoint is not None:
        body["endpoint"] = endpoint
    if checkpoint is not None:
        job_id, _, step = checkpoint.partition(":")
        if not (job_id.isdigit() and step.isdigit()):
            fail(f"--checkpoint {checkpoint!r}: give JOB:STEP, two whole numbers (e.g. 12:200)")
        body["checkpoint"] = {"job": int(job_id), "step": int(step)}
    with client() as api:
        evaluation = call(api.request, "POST", "/api/v1/evaluations", json=body)
        console.print(
            f"evaluation {evaluation['id']} submitted (job {evaluation['job_id']})",
            highlight=False,
        )
        if not wait:
            return
        while evaluation["status"] == "pending":
            time.sleep(1)
            evaluation = call(api.get, f"evaluations/{evaluation['id']}")
    _print(evaluation)
    if evaluation["status"] != "succeeded":
        raise typer.Exit(1)


def _score(row: dict[str, Any]) -> str:
    mean = row["summary"].get(row["scorer"], {}).get("mean")
    return f"{row['scorer']} {mean:.4f}" if mean is not None else "-"


EVALUATION_COLUMNS = [
    Column("id", lambda e: str(e["id"]), justify="right"),
    Column("name", lambda e: e["name"], flex=True),
    Column("status", lambda e: e["status"]),
    Column("model", lambda e: e["model"], drop=1, flex=True),
    Column("dataset", lambda e: e["dataset"], drop=2, flex=True),
    Column("score", _score, flex=True),
]


@eval_app.command("list")
def eval_list(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    output: OutputOption = Output.table,
    wide: WideOption = False,
) -> None:
    """Evaluations, newest first."""
    with client() as api:
        page = call(api.request, "GET", "/api/v1/evaluations", params={"limit": limit})

    def show(page: dict[str, Any]) -> None:
        if not page["items"]:
            console.print("no evaluations yet")
            return
        print_table(EVALUATION_COLUMNS, page["items"], wide=wide)

    emit(output, page, show)


@eval_app.command("show")
def eval_show(
    evaluation_id: int,
    samples: Annotated[int, typer.Option(min=0, max=500, help="Show this many samples.")] = 0,
    by: Annotated[
        str | None, typer.Option(help="The score by the value of this dataset label.")
    ] = None,
    output: OutputOption = Output.table,
) -> None:
    """An evaluation's scores (mean, standard error, 95% interval), by a dataset label with
    --by, and its first samples (as JSON: {"evaluation": ..., "breakdown": [...],
    "samples": [...]})."""
    with client() as api:
        evaluation = call(api.get, f"evaluations/{evaluation_id}")
        groups = []
        if by is not None:
            groups = call(
                api.request,
                "GET",
                f"/api/v1/evaluations/{evaluation_id}/breakdown",
                params={"label": by},
            )["groups"]
        rows = []
        if samples:
            rows = call(
                api.request,
                "GET",
                f"/api/v1/evaluations/{evaluation_id}/samples",
                params={"limit": samples},
            )["items"]
    if output is Output.json:
        print_json({"evaluation": evaluation, "breakdown": groups, "samples": rows})
        return
    _print(evaluation)
    for group in groups:
        console.print(f"  {by}={group['value']}: {_score_line(evaluation['scorer'], group)}")
    if rows:
        print_table(SAMPLE_COLUMNS, rows)


SAMPLE_COLUMNS = [
    Column("idx", lambda r: str(r["idx"]), justify="right"),
    Column("reference", lambda r: r["reference"], flex=True),
    Column("output", lambda r: r["output"], flex=True),
    Column(
        "scores", lambda r: ", ".join(f"{k}={v:.3g}" for k, v in r["scores"].items()), flex=True
    ),
]


@eval_app.command("rescore")
def eval_rescore(
    evaluation_id: int,
    scorer: str,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a scorer that runs on a worker.")
    ] = False,
) -> None:
    """Score an evaluation's stored generations with another scorer (no new generation).
    file:NAME and judge:ENDPOINT:RUBRIC run on a worker; --wait waits for them."""
    with client() as api:
        evaluation = call(
            api.request,
            "POST",
            f"/api/v1/evaluations/{evaluation_id}/rescore",
            json={"scorer": scorer},
        )
        while wait and (scoring := _scoring(evaluation, scorer)) is not None:
            if scoring["status"] not in ("queued", "running"):
                break
            time.sleep(1)
            evaluation = call(api.get, f"evaluations/{evaluation_id}")
    _print(evaluation)
    scoring = _scoring(evaluation, scorer)
    if scoring is not None and scoring["status"] == "failed":
        raise typer.Exit(1)


def _scoring(evaluation: dict[str, Any], scorer: str) -> dict[str, Any] | None:
    if scorer in evaluation["summary"]:
        return None
    return next((s for s in evaluation.get("scorings", []) if s["scorer"] == scorer), None)


@eval_app.command("compare")
def eval_compare(
    a: Annotated[int, typer.Argument(help="The baseline evaluation.")],
    b: Annotated[list[int], typer.Argument(help="One candidate evaluation, or several.")],
    scorer: Annotated[str | None, typer.Option(help="Default: A's scorer.")] = None,
    change: Annotated[
        str | None, typer.Option(help="Show samples that improved, regressed or unchanged.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 10,
    output: OutputOption = Output.table,
) -> None:
    """B against A on the same samples: improved / regressed / unchanged and a paired test.
    With several B: each against A, best first, p-values adjusted for their number."""
    if change not in (None, "improved", "regressed", "unchanged"):
        fail("--change must be improved, regressed or unchanged", 2)
    if len(b) > 1:
        if change:
            fail("--change shows the samples of one comparison: name one B", 2)
        _rank(a, b, scorer, output)
        return
    params: dict[str, Any] = {"a": a, "b": b[0], "limit": limit}
    if scorer:
        params["scorer"] = scorer
    if change:
        params["change"] = change
    with client() as api:
        result = call(api.request, "GET", "/api/v1/evaluations/compare", params=params)
    emit(output, result, _print_comparison)


def _print_comparison(result: dict[str, Any]) -> None:
    stats = result["stats"]
    verdict = "significant" if stats["significant"] else "not significant"
    console.print(
        f"{result['scorer']}: {stats['mean_a']:.4f} -> {stats['mean_b']:.4f} "
        f"(delta {stats['delta']:+.4f}, {stats['test']} p={stats['p_value']:.4g}, {verdict})\n"
        f"improved {stats['improved']}, regressed {stats['regressed']}, "
        f"unchanged {stats['unchanged']} of {stats['n']}",
        highlight=False,
    )
    if result["samples"]:
        print_table(CHANGE_COLUMNS, result["samples"])


CHANGE_COLUMNS = [
    Column("idx", lambda r: str(r["idx"]), justify="right"),
    Column("change", lambda r: r["change"]),
    Column("reference", lambda r: r["reference"], flex=True),
    Column("A", lambda r: r["output_a"], flex=True),
    Column("B", lambda r: r["output_b"], flex=True),
]


def _rank(baseline: int, candidates: list[int], scorer: str | None, output: Output) -> None:
    params: dict[str, Any] = {"baseline": baseline, "candidate": candidates}
    if scorer:
        params["scorer"] = scorer
    with client() as api:
        result = call(api.request, "GET", "/api/v1/evaluations/rank", params=params)
    emit(output, result, _print_ranking)


def _print_ranking(result: dict[str, Any]) -> None:
    mean = result["baseline_mean"]
    console.print(
        f"{result['scorer']}: baseline {result['baseline']} {result['baseline_name']} "
        f"{'-' if mean is None else f'{mean:.4f}'}; candidates best first "
        "(p adjusted over all of them, Benjamini-Hochberg)",
        highlight=False,
    )
    print_table(RANK_COLUMNS, result["candidates"])


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


RANK_COLUMNS = [
    Column(
        "evaluation",
        lambda r: str(r["evaluation"]),
        short=("id", lambda r: str(r["evaluation"])),
        justify="right",
    ),
    Column("name", lambda r: r["name"], flex=True),
    Column("mean", lambda r: _number(r["stats"]["mean_b"], ".4f"), justify="right"),
    Column("delta", lambda r: _number(r["stats"]["delta"], "+.4f"), justify="right"),
    Column(
        "improved",
        lambda r: str(r["stats"]["improved"]),
        drop=1,
        short=("better", lambda r: str(r["stats"]["improved"])),
        justify="right",
    ),
    Column(
        "regressed",
        lambda r: str(r["stats"]["regressed"]),
        drop=1,
        short=("worse", lambda r: str(r["stats"]["regressed"])),
        justify="right",
    ),
    Column("p", lambda r: _number(r["stats"]["p_value"], ".4g"), drop=2, justify="right"),
    Column("p adj.", lambda r: _number(r["p_adjusted"], ".4g"), justify="right"),
    Column(
        "",
        lambda r: "significant" if r["significant"] else "",
        short=("sig.", lambda r: "yes" if r["significant"] else ""),
    ),
]


rubrics_app = typer.Typer(
    help="Rubrics an LLM judge is asked about each sample (scorer judge:ENDPOINT:RUBRIC).",
    no_args_is_help=True,
)
eval_app.add_typer(rubrics_app, name="rubrics")


@rubrics_app.command("add")
def rubrics_add(
    name: str,
    text_file: Annotated[
        typer.FileText,
        typer.Option(
            "--file",
            help="The rubric's text, with {output} (and {prompt}, {reference}); - reads stdin.",
        ),
    ],
    max_score: Annotated[
        float, typer.Option(min=0.001, max=1000, help="The judge answers 0 to this.")
    ] = 10.0,
) -> None:
    """Store a rubric."""
    body = {"name": name, "text": text_file.read(), "max_score": max_score}
    with client() as api:
        rubric = call(api.request, "POST", "/api/v1/evaluations/rubrics", json=body)
    console.print(f"rubric {rubric['name']} stored (0 to {rubric['max_score']:g})", highlight=False)


RUBRIC_COLUMNS = [
    Column("name", lambda r: r["name"]),
    Column("max score", lambda r: f"{r['max_score']:g}", justify="right"),
    Column("text", lambda r: r["text"][:80], flex=True),
]


@rubrics_app.command("list")
def rubrics_list(output: OutputOption = Output.table) -> None:
    """Stored rubrics."""
    with client() as api:
        rubrics = call(api.request, "GET", "/api/v1/evaluations/rubrics")

    def show(rubrics: list[dict[str, Any]]) -> None:
        if not rubrics:
            console.print("no rubrics yet")
            return
        print_table(RUBRIC_COLUMNS, rubrics)

    emit(output, rubrics, show)


@rubrics_app.command("rm")
def rubrics_rm(name: str) -> None:
    """Delete a rubric."""
    act("DELETE", f"evaluations/rubrics/{name}", lambda _: f"rubric {name} deleted")


suites_app = typer.Typer(
    help="Suites: named sets of datasets a model is evaluated on together (lm-eval tasks too).",
    no_args_is_help=True,
)
eval_app.add_typer(suites_app, name="suites")


def _item(text: str) -> dict[str, Any]:
    dataset, _, rest = text.partition("=")
    scorer, _, limit = rest.partition("@")
    if not dataset or (limit and not limit.isdigit()):
        fail(
            f"--item {text!r}: give DATASET[=SCORER][@MAX_SAMPLES], e.g. tiny-math-eval=numeric@50"
        )
    item: dict[str, Any] = {"dataset": dataset, "scorer": scorer or "numeric"}
    if limit:
        item["max_samples"] = int(limit)
    return item


@suites_app.command("add")
def suites_add(
    name: str,
    item: Annotated[
        list[str], typer.Option(help="DATASET[=SCORER][@MAX_SAMPLES]; repeat for each dataset.")
    ],
    description: Annotated[str, typer.Option()] = "",
) -> None:
    """Store a suite of datasets, each with its scorer."""
    body = {"name": name, "items": [_item(i) for i in item], "description": description}
    with client() as api:
        suite = call(api.request, "POST", "/api/v1/evaluations/suites", json=body)
    console.print(f"suite {suite['name']}: {len(suite['items'])} dataset(s)", highlight=False)


SUITE_COLUMNS = [
    Column("name", lambda s: s["name"]),
    Column(
        "datasets",
        lambda s: ", ".join(f"{i['dataset']}={i['scorer']}" for i in s["items"]),
        flex=True,
    ),
    Column("description", lambda s: s["description"], flex=True),
]


@suites_app.command("list")
def suites_list(output: OutputOption = Output.table) -> None:
    """Stored suites."""
    with client() as api:
        suites = call(api.request, "GET", "/api/v1/evaluations/suites")

    def show(suites: list[dict[str, Any]]) -> None:
        if not suites:
            console.print("no suites yet")
            return
        print_table(SUITE_COLUMNS, suites)

    emit(output, suites, show)


@suites_app.command("rm")
def suites_rm(name: str) -> None:
    """Delete a suite (its runs and their evaluations stay)."""
    act("DELETE", f"evaluations/suites/{name}", lambda _: f"suite {name} deleted")


def _print_run(run: dict[str, Any]) -> None:
    mean = "-" if run["mean"] is None else f"{run['mean']:.4f}"
    console.print(
        f"suite run {run['id']} {run['name']}: [bold]{run['status']}[/bold]  {run['model']} on "
        f"{run['suite']}, mean of the datasets {mean}",
        highlight=False,
    )
    print_table(RUN_COLUMNS, run["items"])


RUN_COLUMNS = [
    Column("dataset", lambda i: i["dataset"], flex=True),
    Column("scorer", lambda i: i["scorer"], drop=2),
    Column(
        "evaluation",
        lambda i: str(i["evaluation"]),
        short=("eval", lambda i: str(i["evaluation"])),
        justify="right",
    ),
    Column("status", lambda i: i["status"]),
    Column(
        "score",
        lambda i: _score_line(i["scorer"], i["summary"]) if i["summary"] else "-",
        flex=True,
    ),
]


@suites_app.command("run")
def suites_run(
    suite: str,
    name: Annotated[str, typer.Option(help="The run's name.")],
    model: Annotated[str | None, typer.Option(help="A registered model.")] = None,
    job: Annotated[int | None, typer.Option(help="Or: the final model of this job.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Or: an endpoint.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    engine: Annotated[str, typer.Option(help="auto, transformers, vllm or api.")] = "auto",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for every result.")] = False,
) -> None:
    """Evaluate a model on every dataset of a suite."""
    body: dict[str, Any] = {
        "name": name,
        "generation": {"max_new_tokens": max_new_tokens, "engine": engine},
    }
    if model is not None:
        body["model"] = int(model) if model.isdigit() else model
    if job is not None:
        body["job"] = job
    if endpoint is not None:
        body["endpoint"] = endpoint
    with client() as api:
        run = call(api.request, "POST", f"/api/v1/evaluations/suites/{suite}/runs", json=body)
        while wait and run["status"] == "pending":
            time.sleep(1)
            run = call(api.get, f"evaluations/suite-runs/{run['id']}")
    _print_run(run)
    if wait and run["status"] != "succeeded":
        raise typer.Exit(1)


@suites_app.command("show")
def suites_show(run_id: int, output: OutputOption = Output.table) -> None:
    """A suite run: each dataset's result and their mean."""
    with client() as api:
        run = call(api.get, f"evaluations/suite-runs/{run_id}")
    emit(output, run, _print_run)


@suites_app.command("import-lm-eval")
def suites_import_lm_eval(
    name: Annotated[str, typer.Argument(help="The suite; its datasets are named NAME-TASK.")],
    task: Annotated[list[str], typer.Option(help="An lm-evaluation-harness task; repeat.")],
    include_path: Annotated[
        Path | None, typer.Option(help="A folder of your own lm-eval task YAML files.")
    ] = None,
    bundled: Annotated[
        bool, typer.Option(help="Also look among lm-eval's bundled tasks (slower to index).")
    ] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="First N documents per task.")] = None,
) -> None:
    """Build a suite from lm-eval tasks whose data is on this machine already (nothing is
    downloaded): each task becomes a prompt/answer dataset, uploaded, and one suite names them."""
    import json
    import tempfile

    try:
        from training_platform.evaluation.lm_eval_tasks import TaskError, load_tasks
    except ImportError:
        fail("lm-eval is not installed here (pip install lm-eval)")
    try:
        found = load_tasks(
            task,
            include_path=str(include_path) if include_path else None,
            bundled=bundled,
            limit=limit,
        )
    except TaskError as error:
        fail(str(error))
    items = []
    with client() as api, tempfile.TemporaryDirectory(prefix="tp-lm-eval-") as scratch:
        for rows in found:
            dataset = f"{name}-{rows.task}"[:200]
            path = Path(scratch) / f"{rows.task}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows.rows), encoding="utf-8")
            uploaded = call(
                api.upload,
                "datasets",
                path,
                name=dataset,
                filename=path.name,
                format="prompt_answer",
                description=f"lm-eval task {rows.task} ({rows.output_type})",
            )
            console.print(
                f"dataset {uploaded['name']}: {uploaded['rows']} rows of {rows.task}",
                highlight=False,
            )
            items.append({"dataset": dataset, "scorer": rows.scorer})
        body = {"name": name, "items": items, "description": "lm-eval: " + ", ".join(task)}
        suite = call(api.request, "POST", "/api/v1/evaluations/suites", json=body)
    scored = ", ".join(f"{i['dataset']}={i['scorer']}" for i in suite["items"])
    console.print(f"suite {suite['name']}: {scored}", highlight=False)
