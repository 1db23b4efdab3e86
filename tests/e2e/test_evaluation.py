"""Evaluation for real, on the session's platform: the bundled model and a trained job's final
model generate on tiny-math-eval through generation jobs (the transformers engine, real Celery
workers), their generations are stored once, scored, re-scored without a new job, and compared
sample by sample."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GENERATION = {"max_new_tokens": 12, "max_samples": 12, "batch_size": 6, "engine": "transformers"}


def _wait(client: Any, evaluation_id: int, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/evaluations/{evaluation_id}").json()
        if body["status"] != "pending":
            return body
        time.sleep(0.5)
    raise AssertionError(f"evaluation {evaluation_id} stayed pending: {body}")


def _all_samples(client: Any, evaluation_id: int) -> list[dict[str, Any]]:
    page = client.get(f"/api/v1/evaluations/{evaluation_id}/samples", params={"limit": 500})
    assert page.status_code == 200, page.text
    return list(page.json()["items"])


def test_evaluate_rescore_and_compare_two_models(platform) -> None:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        trained = client.post(
            "/api/v1/jobs",
            json={
                "name": "eval e2e sft",
                "algorithm": "sft",
                "model": "tiny-qwen2",
                "dataset": "tiny-sft",
                "hyperparameters": {"max_steps": 20, "learning_rate": 1e-3},
            },
        )
        assert trained.status_code == 201, trained.text
        job_id = trained.json()["id"]
        # Bad requests are refused with the field named, and store nothing.
        before = client.get("/api/v1/evaluations").json()["total"]
        for body, field in (
            ({"model": "tiny-qwen2", "scorer": "nope"}, "scorer"),
            ({"model": "tiny-qwen2", "scorer": "regex:("}, "scorer"),
            ({"model": "no-such-model"}, "model"),
            ({"job": 2**31 - 1}, "job"),
        ):
            refused = client.post(
                "/api/v1/evaluations",
                json={"name": "bad", "dataset": "tiny-math-eval", **body},
            )
            assert refused.status_code == 422, refused.text
            assert field in str(refused.json()["detail"][0]["loc"]), refused.text
        both = client.post(
            "/api/v1/evaluations",
            json={"name": "bad", "dataset": "tiny-math-eval", "model": "tiny-qwen2", "job": 1},
        )
        assert both.status_code == 422 and "exactly one" in both.text
        assert client.get("/api/v1/evaluations").json()["total"] == before

        base = client.post(
            "/api/v1/evaluations",
            json={
                "name": "base",
                "model": "tiny-qwen2",
                "dataset": "tiny-math-eval",
                "scorer": "numeric",
                "generation": GENERATION,
            },
        )
        assert base.status_code == 201, base.text
        base_id = base.json()["id"]
        platform.wait_status(job_id, {"succeeded"}, timeout=300)
        tuned = client.post(
            "/api/v1/evaluations",
            json={
                "name": "tuned",
                "job": job_id,
                "dataset": "tiny-math-eval",
                "scorer": "numeric",
                "generation": GENERATION,
            },
        )
        assert tuned.status_code == 201, tuned.text
        tuned_id = tuned.json()["id"]
        assert tuned.json()["model"] != "tiny-qwen2"

        a, b = _wait(client, base_id), _wait(client, tuned_id)
        for result in (a, b):
            assert result["status"] == "succeeded", result
            assert result["samples"] == 12 and result["engine_used"] == "transformers"
            numeric = result["summary"]["numeric"]
            assert numeric["n"] == 12 and numeric["interval"] == "wilson"
            assert 0.0 <= numeric["ci_low"] <= numeric["mean"] <= numeric["ci_high"] <= 1.0
        # One row per sample, with the dataset's reference and the model's output.
        rows_a = _all_samples(client, base_id)
        assert [r["idx"] for r in rows_a] == list(range(12))
        assert all(r["reference"] and "numeric" in r["scores"] for r in rows_a)
        assert sum(r["scores"]["numeric"] for r in rows_a) / 12 == pytest.approx(
            a["summary"]["numeric"]["mean"]
        )
        # By the dataset's label (tiny-math-eval rows carry "op"): the stored rows' figures.
        by_op = client.get(f"/api/v1/evaluations/{base_id}/breakdown", params={"label": "op"})
        assert by_op.status_code == 200, by_op.text
        assert by_op.json()["labels"] == ["op"] and by_op.json()["scorer"] == "numeric"
        groups = {g["value"]: g for g in by_op.json()["groups"]}
        assert set(groups) == {r["labels"]["op"] for r in rows_a}
        for op, group in groups.items():
            scores = [r["scores"]["numeric"] for r in rows_a if r["labels"]["op"] == op]
            assert group["n"] == len(scores)
            assert group["mean"] == pytest.approx(sum(scores) / len(scores))

        # Re-scoring generates nothing: no new job, the same outputs, a second summary.
        jobs_before = client.get("/api/v1/jobs", params={"limit": 1}).json()["total"]
        for evaluation_id in (base_id, tuned_id):
            again = client.post(
                f"/api/v1/evaluations/{evaluation_id}/rescore", json={"scorer": "rouge_l"}
            )
            assert again.status_code == 200, again.text
            assert set(again.json()["summary"]) == {"numeric", "rouge_l"}
        assert client.get("/api/v1/jobs", params={"limit": 1}).json()["total"] == jobs_before
        rows_a = _all_samples(client, base_id)
        rows_b = _all_samples(client, tuned_id)
        assert [r["output"] for r in rows_a] == [r["output"] for r in _all_samples(client, base_id)]

        # The comparison's counts are those the stored rows give.
        for scorer in ("numeric", "rouge_l"):
            compared = client.get(
                "/api/v1/evaluations/compare",
                params={"a": base_id, "b": tuned_id, "scorer": scorer, "limit": 500},
            )
            assert compared.status_code == 200, compared.text
            result = compared.json()
            recount = {"improved": 0, "regressed": 0, "unchanged": 0}
            for row_a, row_b in zip(rows_a, rows_b, strict=True):
                sa, sb = row_a["scores"][scorer], row_b["scores"][scorer]
                recount[
                    "improved" if sb > sa + 1e-9 else "regressed" if sb < sa - 1e-9 else "unchanged"
                ] += 1
            assert {k: result["stats"][k] for k in recount} == recount
            assert result["stats"]["n"] == 12
            assert result["stats"]["test"] == ("mcnemar" if scorer == "numeric" else "bootstrap")
            for change, wanted in recount.items():
                filtered = client.get(
                    "/api/v1/evaluations/compare",
                    params={"a": base_id, "b": tuned_id, "scorer": scorer, "change": change},
                ).json()
                assert filtered["total"] == wanted
                assert all(s["change"] == change for s in filtered["samples"])
                assert all(s["output_a"] != s["output_b"] for s in filtered["samples"]) or (
                    change == "unchanged"
                )
        missing = client.get(
            "/api/v1/evaluations/compare", params={"a": base_id, "b": tuned_id, "scorer": "exact"}
        )
        assert missing.status_code == 422 and "rescore it first" in missing.text
        # Candidates against a baseline: each one's figures are its compare's.
        ranked = client.get(
            "/api/v1/evaluations/rank",
            params={"baseline": base_id, "candidate": [tuned_id], "scorer": "numeric"},
        )
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["baseline_mean"] == a["summary"]["numeric"]["mean"]
        (only,) = ranked.json()["candidates"]
        pair = client.get(
            "/api/v1/evaluations/compare",
            params={"a": base_id, "b": tuned_id, "scorer": "numeric"},
        ).json()
        assert only["evaluation"] == tuned_id and only["stats"] == pair["stats"]
        assert only["p_adjusted"] == pair["stats"]["p_value"]  # one test: nothing to adjust

    # The same through the CLI.
    shown = platform.tp("eval", "show", str(tuned_id), "--samples", "3", "--by", "op", check=True)
    assert "numeric: " in shown.stdout and "rouge_l: " in shown.stdout, shown.stdout
    assert "op=addition: numeric: " in shown.stdout, shown.stdout
    compared = platform.tp(
        "eval", "compare", str(base_id), str(tuned_id), "--scorer", "numeric", check=True
    )
    assert "of 12" in compared.stdout and "mcnemar" in compared.stdout, compared.stdout
    twice = platform.tp("eval", "compare", str(base_id), str(tuned_id), str(tuned_id))
    assert twice.returncode != 0 and "candidate" in twice.stderr, twice.stderr
    # An uploaded reward file scores on a worker, in a process of its own (--wait waits).
    source = (
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return 1.0 if ground_truth in solution_str else len(extra_info['prompt']) / 1e4\n"
    )
    with platform.client() as client:
        uploaded = client.post(
            "/api/v1/rewards", params={"name": "has-answer"}, content=source.encode()
        )
        assert uploaded.status_code == 201, uploaded.text
    scored = platform.tp("eval", "rescore", str(base_id), "file:has-answer", "--wait", check=True)
    assert "file:has-answer: " in scored.stdout, scored.stdout
    with platform.client() as client:
        rows = _all_samples(client, base_id)
    expected = [1.0 if r["reference"] in r["output"] else len(r["prompt"]) / 1e4 for r in rows]
    assert [r["scores"]["file:has-answer"] for r in rows] == pytest.approx(expected)
    refused = platform.tp("eval", "rescore", str(base_id), "nope")
    assert refused.returncode == 2 and "unknown scorer" in refused.stderr, refused.stderr


def test_a_suite_from_lm_eval_tasks_evaluates_a_model_on_each(platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """lm-eval tasks with their data on this machine: imported by the CLI as datasets and a
    suite (nothing is downloaded), then one model evaluated on each through real jobs."""
    from tests.evaluation.lm_eval_fixture import write_tasks

    tasks = write_tasks(tmp_path)
    imported = platform.tp(
        "eval", "suites", "import-lm-eval", "lmx", "--task", "tiny_add", "--task", "tiny_pick",
        "--include-path", str(tasks), "--no-bundled", check=True,
    )  # fmt: skip
    assert "suite lmx: lmx-tiny_add=numeric, lmx-tiny_pick=choice" in imported.stdout
    refused = platform.tp(
        "eval", "suites", "import-lm-eval", "lmy", "--task", "tiny_likely",
        "--include-path", str(tasks), "--no-bundled",
    )  # fmt: skip
    assert refused.returncode == 1 and "loglikelihood" in refused.stderr, refused.stderr
    ran = platform.tp(
        "eval", "suites", "run", "lmx", "--name", "tiny", "--model", "tiny-qwen2",
        "--max-new-tokens", "6", "--engine", "transformers", "--wait", check=True,
    )  # fmt: skip
    assert "succeeded" in ran.stdout, ran.stdout
    with platform.client() as client:
        runs = client.get("/api/v1/evaluations/suite-runs", params={"suite": "lmx"}).json()
        (run,) = runs["items"]
        assert run["status"] == "succeeded" and run["model"] == "tiny-qwen2"
        assert [i["dataset"] for i in run["items"]] == ["lmx-tiny_add", "lmx-tiny_pick"]
        means = []
        for item in run["items"]:
            rows = _all_samples(client, item["evaluation"])
            assert len(rows) == {"lmx-tiny_add": 5, "lmx-tiny_pick": 4}[item["dataset"]]
            assert all(r["labels"]["lm_eval_task"] in ("tiny_add", "tiny_pick") for r in rows)
            scores = [r["scores"][item["scorer"]] for r in rows]
            assert item["summary"]["mean"] == pytest.approx(sum(scores) / len(scores))
            means.append(item["summary"]["mean"])
        assert run["mean"] == pytest.approx(sum(means) / 2)
