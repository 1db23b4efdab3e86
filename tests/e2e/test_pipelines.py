"""Pipelines for real: tiny-model stages through the queue, workers and supervisor.

The shipped SFT -> GRPO -> evaluate template runs to the end with GRPO starting from the SFT
checkpoint; a middle stage killed by a fault fails the pipeline and skips what follows, and a
retry from it reruns only it and its dependents; a diamond runs its two branches at once; and
the API and every worker crashing mid-pipeline loses and repeats no stage.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow

FINAL = {"succeeded", "failed", "cancelled"}
SFT: dict[str, Any] = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}


def _sft(steps: int, model: str = "tiny-qwen2") -> dict[str, Any]:
    return {
        "job": {
            **SFT,
            "model": model,
            "hyperparameters": {"max_steps": steps, "learning_rate": 5e-3, "save_steps": 1000},
        }
    }


@pytest.fixture(scope="module")
def two_slots(start_module_platform):  # type: ignore[no-untyped-def]
    return start_module_platform(redis_db=10, TP_TRAINING_SLOTS="2")


def _submit(platform, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        response = client.post("/api/v1/pipelines", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _get(platform, path: str) -> Any:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        response = client.get(f"/api/v1/{path}")
    assert response.status_code == 200, response.text
    return response.json()


def _wait(platform, pipeline_id: int, check, what: str, timeout: float = 300) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    pipeline: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            pipeline = _get(platform, f"pipelines/{pipeline_id}")
        except Exception:  # the API may be restarting
            time.sleep(0.5)
            continue
        if check(pipeline):
            return pipeline
        time.sleep(0.5)
    raise AssertionError(f"pipeline {pipeline_id}: {what} did not happen; it is {pipeline}")


def _stage(pipeline: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in pipeline["stages"] if s["name"] == name)


def _ended(pipeline: dict[str, Any]) -> bool:
    return pipeline["status"] in FINAL


def _running_at_step(platform, pipeline: dict[str, Any], name: str) -> bool:  # type: ignore[no-untyped-def]
    stage = _stage(pipeline, name)
    if stage["job_id"] is None:
        return False
    job = _get(platform, f"jobs/{stage['job_id']}")
    return job["status"] == "running" and (job["progress"]["step"] or 0) >= 1


def _jobs_named(platform, prefix: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    jobs = _get(platform, "jobs?limit=500")["items"]
    return [j for j in jobs if j["name"].startswith(prefix)]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_the_sft_grpo_evaluate_template_succeeds_with_grpo_starting_from_the_sft_checkpoint(
    platform,  # type: ignore[no-untyped-def]
) -> None:
    submitted = _submit(
        platform,
        {
            "template": "sft-grpo-evaluate",
            "name": "e2e template",
            "parameters": {"sft_steps": 8, "rl_steps": 2, "eval_samples": 8},
        },
    )
    done = _wait(platform, submitted["id"], _ended, "the end", timeout=600)
    assert done["status"] == "succeeded", done
    sft, grpo, evaluate = (_stage(done, n) for n in ("sft", "grpo", "evaluate"))
    assert [s["status"] for s in (sft, grpo, evaluate)] == ["succeeded"] * 3
    assert sft["outputs"]["checkpoint"] == f"pipeline-{done['id']}.sft"

    # The plan GRPO was launched with loads the SFT job's final model.
    sft_dir = Path(_get(platform, f"jobs/{sft['job_id']}/plan")["run_dir"])
    plan = _get(platform, f"jobs/{grpo['job_id']}/plan")
    assert plan["algorithm"] == "grpo"
    config = json.loads(plan["files"]["train_config.json"])
    assert Path(config["model_path"]).resolve() == (sft_dir / "model").resolve()

    lineage = _get(platform, f"jobs/{grpo['job_id']}/lineage")
    assert lineage["pipeline"]["stage"] == "grpo" and lineage["pipeline"]["id"] == done["id"]
    produced = lineage["model"]["produced_by"]
    assert (produced["job_id"], produced["stage"]) == (sft["job_id"], "sft")
    assert lineage["dataset"]["name"] == "tiny-sft" and lineage["dataset"]["prepared"]["sha256"]
    upstream = _get(platform, f"jobs/{sft['job_id']}/lineage")
    assert [c["job_id"] for c in upstream["consumers"]] == [grpo["job_id"]]
    assert any(a["registered_as"] == sft["outputs"]["checkpoint"] for a in upstream["artifacts"])

    # The evaluation scored the GRPO model on the held-out set and recorded accuracy.
    outputs = evaluate["outputs"]
    assert outputs["total"] == 8 and 0 <= outputs["accuracy"] <= 1
    assert evaluate["key_metric"] == {"name": "accuracy", "value": outputs["accuracy"]}
    assert (
        _get(platform, f"jobs/{evaluate['job_id']}/lineage")["model"]["name"]
        == grpo["outputs"]["checkpoint"]
    )

    shown = platform.tp("pipelines", "show", str(done["id"]), check=True).stdout
    assert "succeeded" in shown and "accuracy" in shown and "grpo" in shown
    listed = platform.tp("pipelines", "templates", check=True).stdout
    assert "sft-grpo-evaluate" in listed and "sft-dpo" in listed and "sft-gspo" in listed


def test_a_killed_middle_stage_fails_the_pipeline_and_retry_reruns_only_it_and_what_follows(
    two_slots,  # type: ignore[no-untyped-def]
) -> None:
    platform = two_slots
    pipeline = _submit(
        platform,
        {
            "definition": {
                "name": "e2e fault",
                "stages": {
                    "base": _sft(5),
                    "middle": {
                        "depends_on": ["base"],
                        **_sft(80, "${stages.base.outputs.checkpoint}"),
                    },
                    "score": {
                        "depends_on": ["middle"],
                        "evaluate": {
                            "model": "${stages.middle.outputs.checkpoint}",
                            "dataset": "tiny-math-eval",
                            "max_samples": 8,
                        },
                    },
                },
            }
        },
    )
    running = _wait(
        platform,
        pipeline["id"],
        lambda p: _running_at_step(platform, p, "middle"),
        "middle running",
    )
    middle_job = _stage(running, "middle")["job_id"]
    run_dir = Path(_get(platform, f"jobs/{middle_job}/plan")["run_dir"])
    os.kill(int((run_dir / "child.pid").read_text()), signal.SIGKILL)  # the OOM killer's signal

    failed = _wait(platform, pipeline["id"], _ended, "the end")
    assert failed["status"] == "failed", failed
    assert [s["status"] for s in failed["stages"]] == ["succeeded", "failed", "skipped"]
    assert "killed by SIGKILL" in _stage(failed, "middle")["reason"]
    assert _stage(failed, "score")["reason"] == "upstream stage 'middle' failed"
    assert "stage 'middle' failed" in failed["error"]

    retry = platform.tp(
        "pipelines", "retry", str(pipeline["id"]), "--from-stage", "middle", check=True
    )
    assert "rerunning middle, score" in retry.stdout
    done = _wait(platform, pipeline["id"], _ended, "the end after the retry")
    assert done["status"] == "succeeded", done
    base = _stage(done, "base")
    assert (base["run"], base["jobs"]) == (1, [_stage(failed, "base")["job_id"]])  # reused
    middle = _stage(done, "middle")
    assert middle["run"] == 2 and middle["jobs"] == [middle_job, middle["job_id"]]
    assert _stage(done, "score")["jobs"] == [_stage(done, "score")["job_id"]]
    names = sorted(j["name"] for j in _jobs_named(platform, "e2e fault / "))
    assert names == [
        "e2e fault / base",
        "e2e fault / middle",
        "e2e fault / middle",
        "e2e fault / score",
    ]
    rerun = _get(platform, f"jobs/{middle['job_id']}/lineage")
    assert rerun["model"]["produced_by"]["job_id"] == base["job_id"]


def test_a_diamond_runs_its_branches_at_once_and_the_join_after_both(two_slots) -> None:  # type: ignore[no-untyped-def]
    platform = two_slots
    branch = {"depends_on": ["root"], **_sft(25, "${stages.root.outputs.checkpoint}")}
    pipeline = _submit(
        platform,
        {
            "definition": {
                "name": "e2e diamond",
                "stages": {
                    "root": _sft(5),
                    "left": branch,
                    "right": branch,
                    "join": {
                        "depends_on": ["left", "right"],
                        "evaluate": {
                            "model": "${stages.left.outputs.checkpoint}",
                            "dataset": "tiny-math-eval",
                            "max_samples": 8,
                        },
                    },
                },
            }
        },
    )
    done = _wait(platform, pipeline["id"], _ended, "the end")
    assert done["status"] == "succeeded", done
    jobs = {s["name"]: _get(platform, f"jobs/{s['job_id']}") for s in done["stages"]}
    left, right, join = jobs["left"], jobs["right"], jobs["join"]
    # Both branches ran at the same time (two CPU slots), and the join only after both.
    assert _time(left["started_at"]) < _time(right["finished_at"])
    assert _time(right["started_at"]) < _time(left["finished_at"])
    assert _time(join["created_at"]) >= max(_time(left["finished_at"]), _time(right["finished_at"]))
    assert _time(left["created_at"]) >= _time(jobs["root"]["finished_at"])


def test_a_crash_of_the_api_and_every_worker_mid_pipeline_loses_and_repeats_no_stage(
    two_slots,  # type: ignore[no-untyped-def]
) -> None:
    platform = two_slots
    pipeline = _submit(
        platform,
        {
            "definition": {
                "name": "e2e crash",
                "stages": {
                    "first": _sft(5),
                    "second": {
                        "depends_on": ["first"],
                        **_sft(150, "${stages.first.outputs.checkpoint}"),
                    },
                    "third": {
                        "depends_on": ["second"],
                        **_sft(5, "${stages.second.outputs.checkpoint}"),
                    },
                },
            }
        },
    )
    running = _wait(
        platform,
        pipeline["id"],
        lambda p: _running_at_step(platform, p, "second"),
        "second running",
    )
    second_job = _stage(running, "second")["job_id"]
    for service in ("api", "worker-training", "worker-general", "beat"):
        platform.kill_service(service)
    # The training goes on without the platform and ends while nothing watches it.
    run_dir = platform.home / "runs" / str(second_job) / "attempt-1"
    assert not (run_dir / "exit.json").exists(), "the stage ended before the crash"
    deadline = time.monotonic() + 240
    while not (run_dir / "exit.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (run_dir / "exit.json").exists(), "the training did not finish on its own"
    platform.tp("up", "--timeout", "120", check=True)

    done = _wait(platform, pipeline["id"], _ended, "the end after the restart")
    assert done["status"] == "succeeded", done
    for stage in done["stages"]:
        assert stage["run"] == 1 and len(stage["jobs"]) == 1, stage
    assert _stage(done, "second")["job_id"] == second_job
    jobs = _jobs_named(platform, "e2e crash / ")
    assert sorted(j["name"] for j in jobs) == [
        "e2e crash / first",
        "e2e crash / second",
        "e2e crash / third",
    ]
    assert all(j["attempt"] == 1 and j["status"] == "succeeded" for j in jobs)
    assert sorted(p.name for p in (platform.home / "runs" / str(second_job)).iterdir()) == [
        "attempt-1"
    ]


def test_the_dpo_and_gspo_templates_run_on_the_tiny_model(two_slots) -> None:  # type: ignore[no-untyped-def]
    platform = two_slots
    dpo = _submit(
        platform, {"template": "sft-dpo", "parameters": {"sft_steps": 10, "dpo_steps": 6}}
    )
    gspo = _submit(
        platform, {"template": "sft-gspo", "parameters": {"sft_steps": 10, "rl_steps": 4}}
    )
    for submitted, second in ((dpo, "dpo"), (gspo, "gspo")):
        done = _wait(platform, submitted["id"], _ended, "the end", timeout=400)
        assert done["status"] == "succeeded", done
        job = _get(platform, f"jobs/{_stage(done, second)['job_id']}")
        assert job["algorithm"] == second
        assert job["model"] == _stage(done, "sft")["outputs"]["checkpoint"]


def test_cancel_stops_the_running_stage_process_and_ends_cancelled(two_slots) -> None:  # type: ignore[no-untyped-def]
    platform = two_slots
    pipeline = _submit(
        platform,
        {
            "definition": {
                "name": "e2e cancel",
                "stages": {
                    "long": _sft(2000),
                    "never": {
                        "depends_on": ["long"],
                        **_sft(5, "${stages.long.outputs.checkpoint}"),
                    },
                },
            }
        },
    )
    running = _wait(
        platform, pipeline["id"], lambda p: _running_at_step(platform, p, "long"), "long running"
    )
    job_id = _stage(running, "long")["job_id"]
    run_dir = Path(_get(platform, f"jobs/{job_id}/plan")["run_dir"])
    trainer = int((run_dir / "child.pid").read_text())
    platform.tp("pipelines", "cancel", str(pipeline["id"]), check=True)
    done = _wait(platform, pipeline["id"], _ended, "the end", timeout=120)
    assert done["status"] == "cancelled"
    assert [s["status"] for s in done["stages"]] == ["cancelled", "cancelled"]
    assert _get(platform, f"jobs/{job_id}")["status"] == "cancelled"
    assert (
        not psutil.pid_exists(trainer) or psutil.Process(trainer).status() == psutil.STATUS_ZOMBIE
    )


def _upload(platform, name: str, rows: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with platform.client() as client:
        response = client.post(
            "/api/v1/datasets", params={"name": name, "filename": f"{name}.jsonl"}, content=body
        )
    assert response.status_code == 201, response.text


def test_a_gate_stops_a_planted_regression_and_a_select_registers_the_best_checkpoint(
    two_slots,  # type: ignore[no-untyped-def]
) -> None:
    # The planted regression: the parent learns to answer "yes"; the candidate, trained on
    # from the parent, learns "no". The guard suite asks held-out questions whose answer is yes.
    words = ["apple", "river", "stone", "cloud", "lamp", "green"]
    words += ["seven", "paper", "music", "tiger", "honey", "glass"]
    asked = [f"Is {w} a word you know?" for w in words] + [f"Can you say {w}?" for w in words]
    held_out = [f"Do you like the word {w}?" for w in words]
    for name, answer in (("say-yes", "yes"), ("say-no", "no")):
        _upload(
            two_slots,
            name,
            [
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": answer},
                    ]
                }
                for q in asked
            ],
        )
    _upload(two_slots, "guard-yes", [{"prompt": q, "answer": "yes"} for q in held_out])
    train = {"max_steps": 30, "learning_rate": 5e-3, "save_steps": 10, "save_total_limit": 3}
    guard = {"dataset": "guard-yes", "scorer": "contains", "max_new_tokens": 4}
    definition = {
        "name": "guarded",
        "stages": {
            "parent": {"job": {**SFT, "dataset": "say-yes", "hyperparameters": train}},
            "candidate": {
                "depends_on": ["parent"],
                "job": {
                    **SFT,
                    "model": "${stages.parent.outputs.checkpoint}",
                    "dataset": "say-no",
                    "hyperparameters": {**train, "save_steps": 1000},
                },
            },
            "select": {
                "depends_on": ["parent"],
                "select": {"job": "${stages.parent.outputs.job}", **guard},
            },
            "eval_parent": {
                "depends_on": ["parent"],
                "evaluate": {"model": "${stages.parent.outputs.checkpoint}", **guard},
            },
            "eval_candidate": {
                "depends_on": ["candidate"],
                "evaluate": {"model": "${stages.candidate.outputs.checkpoint}", **guard},
            },
            "gate": {
                "depends_on": ["eval_parent", "eval_candidate"],
                "gate": {
                    "baseline": "${stages.eval_parent.outputs.evaluation}",
                    "candidate": "${stages.eval_candidate.outputs.evaluation}",
                },
            },
            "promote": {
                "depends_on": ["gate"],
                "evaluate": {"model": "${stages.candidate.outputs.checkpoint}", **guard},
            },
        },
    }
    # Refused on submit, naming the field: a gate on something that is not an evaluation.
    with two_slots.client() as client:
        bad = json.loads(json.dumps(definition))
        bad["stages"]["gate"]["gate"]["candidate"] = "${stages.eval_candidate.outputs.score}"
        refused = client.post("/api/v1/pipelines", json={"definition": bad})
        assert refused.status_code == 422, refused.text
        assert "type mismatch" in refused.text and "gate" in str(refused.json()["detail"][0]["loc"])
    submitted = _submit(two_slots, {"definition": definition})
    done = _wait(two_slots, submitted["id"], _ended, "the end", timeout=600)
    assert done["status"] == "failed", done
    gate, promote, select = (_stage(done, n) for n in ("gate", "promote", "select"))
    assert gate["status"] == "failed" and promote["status"] == "skipped", done
    assert "the candidate regressed significantly" in gate["reason"], gate
    assert "stage 'gate' failed: the candidate regressed significantly" in done["error"]
    # The gate's figures are the evaluations' own comparison.
    baseline = _stage(done, "eval_parent")["outputs"]["evaluation"]
    candidate = _stage(done, "eval_candidate")["outputs"]["evaluation"]
    compared = _get(two_slots, f"evaluations/compare?a={baseline}&b={candidate}&scorer=contains")
    assert gate["outputs"]["regressed"] == compared["stats"]["regressed"] > 0
    assert gate["outputs"]["p_value"] == compared["stats"]["p_value"] < 0.05
    assert gate["outputs"]["delta"] == compared["stats"]["delta"] < 0

    # The select stage evaluated checkpoints 10, 20 and 30 and registered the best.
    assert select["status"] == "succeeded", select["reason"]
    candidates = select["outputs"]["candidates"]
    assert [c["step"] for c in candidates] == [10, 20, 30]
    for c in candidates:
        evaluation = _get(two_slots, f"evaluations/{c['evaluation']}")
        assert evaluation["status"] == "succeeded" and evaluation["model"] == c["model"]
        assert evaluation["summary"]["contains"]["mean"] == c["score"]
    best = max(candidates, key=lambda c: (c["score"], c["step"]))
    assert select["outputs"]["step"] == best["step"]
    assert select["outputs"]["score"] == best["score"]
    name = select["outputs"]["checkpoint"]
    assert name == f"pipeline-{done['id']}.select"
    models = {m["name"]: m for m in _get(two_slots, "models")}
    assert models[name]["job_id"] == _stage(done, "parent")["job_id"]
