"""The `tp` CLI against the running platform: clear messages and non-zero exits on bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from training_platform.cli.main import app

pytestmark = pytest.mark.slow


@pytest.fixture
def tp(platform):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {k: v for k, v in platform.env.items() if k.startswith("TP_")}

    def invoke(*args: str, **extra_env: str) -> Any:
        return runner.invoke(app, list(args), env={**env, **extra_env})

    return invoke


SUBMIT = [
    "jobs",
    "submit",
    "--name",
    "cli",
    "--algorithm",
    "sft",
    "--model",
    "tiny-qwen2",
    "--dataset",
    "tiny-sft",
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # other tests on the shared platform register models of their own
        (["--model", "nope"], "model: unknown model 'nope'; available: "),
        (
            ["-p", "learning_rate=-1"],
            "hyperparameters.learning_rate: Input should be greater than 0",
        ),
        (["-p", "max_steps=1e12"], "hyperparameters.max_steps"),
        (["-p", "warmup=3"], "hyperparameters.warmup: Extra inputs are not permitted"),
        (["--backend", "verl", "--algorithm", "dpo"], "does not support 'dpo'; use backend 'trl'"),
        (["--priority", "12"], "priority: Input should be less than or equal to 9"),
    ],
)
def test_bad_submissions_exit_2_with_the_reason(
    tp, platform, extra: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    before = json.loads(tp("jobs", "list", "--output", "json").stdout)["total"]
    result = tp(*SUBMIT, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr.replace("\n", " ")
    assert json.loads(tp("jobs", "list", "--output", "json").stdout)["total"] == before


def test_missing_options_and_malformed_params_are_refused(tp) -> None:  # type: ignore[no-untyped-def]
    result = tp("jobs", "submit", "--algorithm", "sft")
    assert result.exit_code == 2 and "missing --name, --model, --dataset" in result.stderr
    result = tp(*SUBMIT, "-p", "no-equals-sign")
    assert result.exit_code == 2 and "is not key=value" in result.output


def test_dry_run_prints_the_plan_and_creates_nothing(tp) -> None:  # type: ignore[no-untyped-def]
    before = json.loads(tp("jobs", "list", "--output", "json").stdout)["total"]
    result = tp(*SUBMIT, "--dry-run", "-p", "max_steps=3")
    assert result.exit_code == 0, result.output
    assert (
        "training_platform.trainers.trl_train" in result.stdout
        and '"max_steps": 3' in result.stdout
    )
    assert json.loads(tp("jobs", "list", "--output", "json").stdout)["total"] == before


def test_submit_from_a_yaml_file_then_list_show_plan_logs(tp, platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: 'from yaml; $(id)'\nalgorithm: sft\nmodel: tiny-qwen2\ndataset: tiny-sft\n"
        "priority: 6\nhyperparameters:\n  max_steps: 2\n  learning_rate: 0.001\n"
    )
    result = tp("jobs", "submit", "--file", str(spec), "--output", "json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["name"] == "from yaml; $(id)" and job["priority"] == 6
    assert job["spec"]["hyperparameters"]["max_steps"] == 2
    watched = tp("jobs", "watch", str(job["id"]))
    assert watched.exit_code == 0 and "succeeded" in watched.stdout
    # Progress only (no "step 0/None"); the log with --log.
    assert "None" not in watched.stdout and "[launcher" not in watched.stdout, watched.stdout
    with_log = tp("jobs", "watch", str(job["id"]), "--log")
    assert with_log.exit_code == 0 and "trainer exited with code 0" in with_log.stdout
    listed = json.loads(tp("jobs", "list", "--output", "json", "-s", "succeeded").stdout)
    assert job["id"] in [j["id"] for j in listed["items"]]
    _jobs_list_fits_80_columns(tp, job["id"])
    _json_is_the_apis_answer(tp, platform, job["id"])
    shown = tp("jobs", "show", str(job["id"]))
    assert "from yaml; $(id)" in shown.stdout and "succeeded" in shown.stdout
    plan = json.loads(tp("jobs", "plan", str(job["id"]), "--output", "json").stdout)
    assert plan["argv"][-2:] == ["--config", "train_config.json"]
    logs = tp("jobs", "logs", str(job["id"]))
    assert "trainer exited with code 0" in logs.stdout
    cancel = tp("jobs", "cancel", str(job["id"]))
    assert cancel.exit_code == 1 and "already succeeded" in cancel.stderr
    retry = tp("jobs", "retry", str(job["id"]))
    assert retry.exit_code == 1 and "only failed or cancelled" in retry.stderr


def test_catalog_lists(tp) -> None:  # type: ignore[no-untyped-def]
    assert "tiny-qwen2" in tp("models", "list").stdout
    datasets = tp("datasets", "list").stdout
    assert "tiny-sft" in datasets and "messages" in datasets


def test_datasets_preview_versions_diff_rows_analyze_and_render(tp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    first = tmp_path / "sg.jsonl"
    rows = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(6)
    ]
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shown = tp("datasets", "upload", str(first), "--preview")
    assert shown.exit_code == 0, shown.output
    assert "6 rows of sharegpt (sft data), detected by sharegpt: has conversations" in shown.stdout
    assert tp("datasets", "upload", str(first)).exit_code != 0  # no --name
    made = tp("datasets", "upload", str(first), "--name", "cli-sg")
    assert made.exit_code == 0 and "version 1: 6 rows of sharegpt" in made.stdout, made.output
    second = tmp_path / "sg2.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    again = tp("datasets", "upload", str(second), "--name", "cli-sg", "--new-version")
    assert again.exit_code == 0 and "version 2: 4 rows" in again.stdout, again.output
    assert tp("datasets", "upload", str(second), "--name", "cli-sg").exit_code == 1
    versions = tp("datasets", "versions", "cli-sg").stdout
    assert versions.index("│ 2 ") < versions.index("│ 1 ")
    assert "-2 (4 unchanged)" in tp("datasets", "diff", "cli-sg", "--base", "1").stdout
    found = tp("datasets", "rows", "cli-sg", "--search", "Q5", "--version", "1").stdout
    assert found.startswith("1 rows (version 1)") and "row 6:" in found
    stats = tp("datasets", "analyze", "cli-sg", "--model", "tiny-qwen2", "--max-length", "8")
    assert stats.exit_code == 0, stats.output
    assert "analysis" in stats.stdout and "of cli-sg@2: 4 rows of sharegpt" in stats.stdout
    assert "longer than 8:" in stats.stdout
    shown = tp("datasets", "render", "cli-sg", "1", "--model", "tiny-qwen2")
    assert shown.exit_code == 0 and "tokens count toward the loss" in shown.stdout, shown.output
    third = tmp_path / "sg3.jsonl"
    third.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0]]))
    tp("datasets", "upload", str(third), "--name", "cli-sg", "--new-version")
    review = tp("datasets", "dedup", "cli-sg", "--stages", "exact,near")
    assert review.exit_code == 0, review.output
    assert "of cli-sg@3: 7 rows, 1 to drop (exact 1 in 1 clusters" in review.stdout
    assert "drop row 7 (1.000)" in review.stdout
    dedup_id = review.stdout.split("tp datasets accept cli-sg ")[1].split()[0]
    accepted = tp("datasets", "accept", "cli-sg", dedup_id)
    assert "cli-sg version 4: 6 rows (1 dropped)" in accepted.stdout, accepted.output
    found = tp("datasets", "search", "cli-sg", "q3", "--limit", "2")  # answered by a worker
    assert found.exit_code == 0 and found.stdout.count(" row ") == 2, found.output
    like = tp("datasets", "search", "cli-sg", "--row", "1", "--limit", "3")
    assert like.exit_code == 0 and like.stdout.count(" row ") == 3 and " row 1:" not in like.stdout
    missing = tp("datasets", "search", "cli-sg", "--row", "99")
    assert missing.exit_code == 1 and "has no row 99" in missing.stderr, missing.output
    assert tp("datasets", "search", "cli-sg").exit_code == 1


def test_a_wrong_token_or_no_api_gives_a_message_and_exit_1(tp) -> None:  # type: ignore[no-untyped-def]
    import socket

    wrong = tp("jobs", "list", TP_TOKEN="not-the-token")
    assert wrong.exit_code == 1 and "invalid or revoked token" in wrong.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = str(probe.getsockname()[1])
    down = tp("jobs", "list", TP_PORT=closed_port)
    assert down.exit_code == 1 and "cannot reach the API" in down.stderr


@pytest.mark.parametrize(
    ("algorithm", "dataset"),
    [("sft", "tiny-sft"), ("ppo", "tiny-math"), ("grpo", "tiny-math"), ("gspo", "tiny-math")],
)
def test_verl_plans_from_the_cli_compose_against_verls_config_tree(tp, algorithm, dataset) -> None:  # type: ignore[no-untyped-def]
    hydra = pytest.importorskip("hydra")
    verl = pytest.importorskip("verl")
    from pathlib import Path

    result = tp(
        "jobs",
        "submit",
        "--name",
        "verl plan",
        "--backend",
        "verl",
        "--algorithm",
        algorithm,
        "--model",
        "tiny-qwen2",
        "--dataset",
        dataset,
        "--gpus",
        "2",
        "--dry-run",
        "--output",
        "json",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    command = json.loads(plan["files"]["verl_run.json"])["command"]
    entry = next(i for i, part in enumerate(command) if part.startswith("verl.trainer."))
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    name = "sft_trainer_engine" if algorithm == "sft" else "ppo_trainer"
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        config = hydra.compose(name, overrides=command[entry + 1 :])
    if algorithm == "gspo":
        assert config.actor_rollout_ref.actor.policy_loss.loss_mode == "gspo"
    if algorithm in ("grpo", "gspo"):
        assert config.algorithm.adv_estimator == "grpo"
        assert config.actor_rollout_ref.rollout.n > 1
    if algorithm == "ppo":
        assert config.algorithm.adv_estimator == "gae"


def test_verl_without_gpus_is_refused_naming_resources(tp) -> None:  # type: ignore[no-untyped-def]
    result = tp(
        "jobs",
        "submit",
        "--name",
        "x",
        "--backend",
        "verl",
        "--algorithm",
        "grpo",
        "--model",
        "tiny-qwen2",
        "--dataset",
        "tiny-math",
    )
    assert result.exit_code == 2 and "resources.gpus" in result.stderr


@pytest.mark.parametrize(
    ("definition", "args", "message"),
    [
        (
            "name: c\nstages:\n  a: {depends_on: [b], job: {algorithm: sft, model: tiny-qwen2, "
            "dataset: tiny-sft}}\n  b: {depends_on: [a], job: {algorithm: sft, model: tiny-qwen2, "
            "dataset: tiny-sft}}\n",
            [],
            "definition.stages.a.depends_on: stage 'a': the stages form a cycle: a -> b -> a",
        ),
        (
            "name: d\nstages:\n  a: {job: {algorithm: sft, "
            "model: '${stages.x.outputs.checkpoint}', dataset: tiny-sft}}\n",
            [],
            "definition.stages.a.job.model: stage 'a':",
        ),
        (
            "name: e\nstages: {a: {job: {algorithm: sft, model: tiny-qwen2, dataset: tiny-sft}}}\n",
            ["-p", "steps=3"],
            "parameters.steps: the pipeline declares no parameter 'steps'",
        ),
    ],
)
def test_bad_pipeline_definitions_exit_2_naming_stage_and_field(
    tp, tmp_path, definition: str, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pipeline.yaml"
    path.write_text(definition)
    before = json.loads(tp("pipelines", "list", "--output", "json").stdout)["total"]
    result = tp("pipelines", "submit", str(path), *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert json.loads(tp("pipelines", "list", "--output", "json").stdout)["total"] == before


def test_pipeline_commands_without_a_definition_or_with_a_bad_id_fail(tp) -> None:  # type: ignore[no-untyped-def]
    result = tp("pipelines", "submit")
    assert result.exit_code == 2 and "give a definition FILE or --template NAME" in result.output
    result = tp("pipelines", "show", "987654")
    assert result.exit_code == 1 and "pipeline 987654 not found" in result.output
    result = tp("pipelines", "submit", "--template", "sft-dpo", "--dry-run")
    assert result.exit_code == 0 and "stages in order: sft, dpo" in result.output
    templates = tp("pipelines", "templates", "sft-gspo")
    assert templates.exit_code == 0 and "${stages.sft.outputs.checkpoint}" in templates.output


def test_tokens_create_list_and_revoke(tp) -> None:  # type: ignore[no-untyped-def]
    created = tp("tokens", "create", "cli-bot")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert len(secret) >= 43 and "shown only now" in created.stderr
    listed = json.loads(tp("tokens", "list", "--output", "json").stdout)["items"]
    # Live tokens (the shared platform may hold tokens other tests made and revoked).
    live = {
        t["name"]: t["current"] for t in listed if t["revoked_at"] is None and t["user"] == "admin"
    }
    assert live == {"admin": True, "cli-bot": False}
    assert secret not in tp("tokens", "list").stdout
    assert tp("jobs", "list", TP_TOKEN=secret).exit_code == 0

    taken = tp("tokens", "create", "cli-bot")
    assert taken.exit_code == 1 and "exists already" in taken.stderr
    bad = tp("tokens", "create", "bad name")
    assert bad.exit_code == 2 and "name: Value error, use letters, digits" in bad.stderr
    admin = tp("tokens", "revoke", "admin")
    assert admin.exit_code == 1 and "$TP_HOME/admin-token" in admin.stderr
    own = tp("tokens", "revoke", "cli-bot", TP_TOKEN=secret)
    assert own.exit_code == 1 and "this request uses" in own.stderr
    missing = tp("tokens", "revoke", "nobody")
    assert missing.exit_code == 1 and "token 'nobody' not found" in missing.stderr

    revoked = tp("tokens", "revoke", "cli-bot")
    assert revoked.exit_code == 0 and "token cli-bot revoked at" in revoked.stdout
    after = tp("jobs", "list", TP_TOKEN=secret)
    assert after.exit_code == 1 and "invalid or revoked token" in after.stderr


def test_a_user_logs_in_and_acts_with_their_role(tp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    made = tp("users", "create", "cli-viewer", "--role", "viewer", "--token", "cli-viewer-t")
    assert made.exit_code == 0, made.output
    assert "user cli-viewer created (viewer)" in made.stdout and "shown only now" in made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    wrong = tp("login", "--token", "not-a-token", **config)
    assert wrong.exit_code == 1 and "invalid or revoked token" in wrong.stderr
    logged = tp("login", "--token", secret, **config)
    assert logged.exit_code == 0 and "as cli-viewer (viewer)" in logged.stdout, logged.output
    kept = tmp_path / "config" / "training_platform" / "credentials.json"
    assert kept.stat().st_mode & 0o077 == 0
    assert "cli-viewer (viewer), token cli-viewer-t" in tp("whoami", **config).stdout
    refused = tp("users", "list", **config)
    assert refused.exit_code == 1 and "needs the admin role" in refused.stderr
    assert tp("jobs", "list", **config).exit_code == 0  # a viewer reads
    assert tp("logout", **config).exit_code == 0
    assert tp("whoami", **config).stdout.startswith("admin (admin")  # the operator's token
    listed = json.loads(tp("users", "list", "--output", "json").stdout)["items"]
    assert {"name": "cli-viewer", "role": "viewer"}.items() <= next(
        u for u in listed if u["name"] == "cli-viewer"
    ).items()
    disabled = tp("users", "update", "cli-viewer", "--disable")
    assert disabled.exit_code == 0 and "disabled" in disabled.stdout
    assert tp("jobs", "list", TP_TOKEN=secret).exit_code == 1
    trail = json.loads(tp("audit", "--output", "json", "--limit", "1000").stdout)["items"]
    assert {"PATCH /api/v1/users/cli-viewer", "POST /api/v1/users"} <= {
        f"{e['method']} {e['path']}" for e in trail if e["user"] == "admin"
    }


def test_projects_quotas_members_and_gpu_hours_through_the_cli(tp) -> None:  # type: ignore[no-untyped-def]
    made = tp("projects", "create", "cli-team", "--guaranteed", "2", "--max", "3")
    assert made.exit_code == 0, made.output
    assert "project cli-team: guaranteed 2 GPU(s), max 3, per user -" in made.stdout
    below = tp("projects", "update", "cli-team", "--max", "1")
    assert below.exit_code == 2 and "below the guarantee of 2" in below.stderr, below.output
    user = tp("users", "create", "cli-member", "--role", "member", "--token", "cli-member-t")
    secret = user.stdout.strip().splitlines()[-1]
    job = ("--name", "x", "--algorithm", "sft", "--model", "tiny-qwen2", "--dataset", "tiny-sft")
    refused = tp("jobs", "submit", *job, "--project", "cli-team", TP_TOKEN=secret)
    assert refused.exit_code == 1 and "not a member of project 'cli-team'" in refused.stderr
    assert tp("projects", "create", "theirs", TP_TOKEN=secret).exit_code == 1  # admins only
    added = tp("projects", "add-member", "cli-team", "cli-member")
    assert added.exit_code == 0 and "members: cli-member" in added.stdout, added.output
    seen = json.loads(tp("projects", "list", "--output", "json", TP_TOKEN=secret).stdout)["items"]
    assert [p["name"] for p in seen] == ["cli-team", "default"]
    usage = tp("projects", "usage", "--days", "1", "--output", "json")
    assert usage.exit_code == 0 and set(json.loads(usage.stdout)) >= {"items", "by_project"}


def test_default_alert_rules_are_set_from_a_file_and_shown(tp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The platform is shared: leave it without default rules, as the other tests expect.
    path = tmp_path / "rules.yaml"
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    try:
        path.write_text(
            "- {rule: above, key: grad_norm, threshold: 1000, action: notify}\n- {rule: nan}\n"
        )
        stored = tp("alerts", "rules-set", str(path))
        assert stored.exit_code == 0, stored.output
        assert "2 default rule(s) stored" in stored.stdout
        shown = tp("alerts", "rules")
        assert "grad_norm" in shown.stdout and "*loss*" in shown.stdout
        as_json = json.loads(tp("alerts", "rules", "--output", "json").stdout)
        assert [r["rule"] for r in as_json["items"]] == ["above", "nan"]

        path.write_text("- {rule: nan}\n- {rule: below, key: reward}\n")
        bad = tp("alerts", "rules-set", str(path))
        assert bad.exit_code == 2 and "items.1: Value error, rule 'below' needs a threshold" in (
            " ".join(bad.stderr.split())
        )
        path.write_text("rule: nan\n")
        assert tp("alerts", "rules-set", str(path)).exit_code == 2
        assert (
            json.loads(tp("alerts", "rules", "--output", "json").stdout)["items"]
            == as_json["items"]
        )
    finally:
        assert tp("alerts", "rules-set", str(empty)).exit_code == 0
    assert "no default rules" in tp("alerts", "rules").stdout


def _jobs_list_fits_80_columns(tp, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """`tp jobs list` in an 80-column terminal: no line wider, status and step never cut (the
    columns that do not fit are left out); --wide shows every column."""
    narrow = tp("jobs", "list", COLUMNS="80")
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), narrow.stdout
    assert "…" not in narrow.stdout, narrow.stdout
    rows = [[cell.strip() for cell in line.split("│")] for line in lines]
    row = next(cells for cells in rows if len(cells) > 2 and cells[1] == str(job_id))
    assert "succeeded" in row and "2/2" in row, row
    header = [cell.strip() for cell in lines[1].split("┃")]
    assert {"id", "name", "status", "step"} <= set(header) and "prio" not in header, lines[1]
    wide = tp("jobs", "list", "--wide", COLUMNS="80")
    header = [cell.strip() for cell in wide.stdout.splitlines()[1].split("┃")]
    assert header[1:-1] == [
        "id",
        "name",
        "algorithm",
        "model",
        "dataset",
        "prio",
        "status",
        "step",
        "created",
    ]
    assert "…" not in wide.stdout and "trl/sft" in wide.stdout


def _json_is_the_apis_answer(tp, platform, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """`--output json` prints the API's answer and nothing else (no colour, no table)."""
    with platform.client() as api:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        events = api.get(f"/api/v1/jobs/{job_id}/events").json()
        listed = api.get("/api/v1/jobs", params={"status": "succeeded", "limit": 500}).json()
        models = api.get("/api/v1/models").json()
    for args, expected in (
        (("jobs", "show", str(job_id)), {"job": job, "events": events}),
        (("models", "list"), models),
    ):
        shown = tp(*args, "--output", "json", COLUMNS="80")
        assert shown.exit_code == 0 and "\x1b" not in shown.stdout, shown.output
        assert json.loads(shown.stdout) == expected
    page = json.loads(tp("jobs", "list", "-o", "json", "-s", "succeeded", "--limit", "500").stdout)
    assert next(j for j in page["items"] if j["id"] == job_id) == next(
        j for j in listed["items"] if j["id"] == job_id
    )
    refused = tp("jobs", "list", "--output", "yaml")
    assert refused.exit_code == 2 and "table" in refused.output and "json" in refused.output


# Commands that read and print what the API holds, besides every `list` and `show`.
READ_COMMANDS = {
    "whoami",
    "audit",
    "gpus",
    "backends",
    "plan",
    "lineage",
    "templates",
    "versions",
    "diff",
    "rows",
    "search",
    "analyze",
    "compare",
    "methods",
    "usage",
    "estimate",
    "advise",
    "rules",
}


def _commands():  # type: ignore[no-untyped-def]
    """Every `tp` command with its name, walking the groups."""
    import typer

    def walk(command, path):  # type: ignore[no-untyped-def]
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path, command
            return
        for name, sub in subcommands.items():
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def test_every_list_and_show_command_prints_json_with_output_json() -> None:
    """One option for scripts, the same on every command that reads: -o/--output table|json."""
    import typer

    readers = []
    for path, command in _commands():
        options = {o: p for p in command.params for o in getattr(p, "opts", [])}
        assert "--json" not in options, f"tp {' '.join(path)} still has --json"
        if path[-1] in {"list", "show"} | READ_COMMANDS:
            readers.append(path)
            assert "--output" in options and "-o" in options, f"tp {' '.join(path)}"
            shown = options["--output"].get_help_record(typer.Context(command))
            assert shown is not None and shown[0] == "-o, --output <table|json>", shown
    assert len(readers) >= 40  # the walk found the commands
