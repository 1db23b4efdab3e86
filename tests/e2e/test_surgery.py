"""Model surgery for real, on the session's platform: tiny models built with known differences
are merged by every method through the API (merge jobs on real Celery workers, mergekit
underneath), each result equals mergekit's own CLI on the same configuration, models that do
not fit together are refused before any job, and a soup and a selection of a trained job's
checkpoints are registered with their lineage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from training_platform.assets.tiny import build_tiny_model

pytestmark = pytest.mark.slow

# mergekit's CLI (`mergekit-yaml`, its click command) on each configuration, in one process
# (the same code path; one import of torch instead of one per configuration), then a compare
# of every tensor with the platform's output, and a generation with the first merged model.
CLI_AND_COMPARE = r"""
import json, sys
from pathlib import Path
import torch
from mergekit.scripts.run_yaml import main as mergekit_yaml
from safetensors.torch import load_file

def tensors(directory):
    found = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found

report = {}
for name, run_dir, scratch, seed in json.loads(sys.argv[1]):
    out = Path(scratch) / name
    mergekit_yaml.main(
        [f"{run_dir}/merge.yml", str(out), "--copy-tokenizer", "--random-seed", str(seed),
         "--lazy-unpickle", "--quiet"],
        standalone_mode=False,
    )
    ours, theirs = tensors(f"{run_dir}/model"), tensors(out)
    report[name] = {
        "same_names": sorted(ours) == sorted(theirs),
        "max_diff": max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours),
        "tensors": len(ours),
    }
from transformers import AutoModelForCausalLM, AutoTokenizer
first = json.loads(sys.argv[1])[0][1] + "/model"
model = AutoModelForCausalLM.from_pretrained(first)
tokenizer = AutoTokenizer.from_pretrained(first)
ids = tokenizer("1 + 1 =", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=5, do_sample=False)
report["generated_tokens"] = int(out.shape[1] - ids.shape[1])
print(json.dumps(report))
"""


def _wait_merge(client: Any, merge_id: int, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/merges/{merge_id}").json()
        if body["status"] != "pending":
            return body
        time.sleep(0.5)
    raise AssertionError(f"merge {merge_id} stayed pending: {body}")


def _register(client: Any, home: Path, name: str, seed: int, **overrides: Any) -> None:
    directory = build_tiny_model(home / "models" / name, seed=seed, overrides=overrides or None)
    answer = client.post("/api/v1/models", json={"name": name, "path": str(directory)})
    assert answer.status_code == 201, answer.text


TIES = {"weight": 0.6, "density": 0.5}
METHODS: dict[str, dict[str, Any]] = {
    "linear": {
        "models": [{"model": "sg-a", "weight": 1.0}, {"model": "sg-b", "weight": 3.0}],
    },
    "slerp": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b"}],
        "parameters": {"t": 0.3},
    },
    "task_arithmetic": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", "weight": 0.7}, {"model": "sg-c", "weight": 0.4}],
        "parameters": {"lambda": 0.9},
    },
    "ties": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", **TIES}, {"model": "sg-c", "weight": 0.4, "density": 0.8}],
    },
    "dare_ties": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", **TIES}, {"model": "sg-c", "weight": 0.4, "density": 0.8}],
        "seed": 7,
    },
    "dare_linear": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", **TIES}, {"model": "sg-c", "weight": 0.4, "density": 0.8}],
        "parameters": {"rescale": False},
    },
    "model_stock": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b"}, {"model": "sg-c"}],
    },
    "breadcrumbs": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", **TIES, "gamma": 0.05}],
    },
    "della": {
        "base": {"model": "sg-a"},
        "models": [{"model": "sg-b", **TIES, "epsilon": 0.1}, {"model": "sg-c", **TIES}],
    },
}


def test_every_method_equals_mergekit_and_unfit_models_are_refused(platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        for name, seed in (("sg-a", 11), ("sg-b", 12), ("sg-c", 13)):
            _register(client, platform.home, name, seed)
        _register(client, platform.home, "sg-wide-vocab", 14, vocab_size=2048)
        _register(client, platform.home, "sg-deep", 15, num_hidden_layers=3)

        # Refused before any job, with the field named, and nothing stored.
        jobs_before = client.get("/api/v1/jobs").json()["total"]
        refusals: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
            (
                {**METHODS["slerp"], "models": [{"model": "sg-wide-vocab"}]},
                ("body", "models", 0),
                "vocab_size",
            ),
            (
                {**METHODS["slerp"], "models": [{"model": "sg-deep"}]},
                ("body", "models", 0),
                "num_hidden_layers",
            ),
            ({**METHODS["slerp"], "parameters": {}}, ("body", "parameters", "t"), "needs"),
            (
                {**METHODS["slerp"], "parameters": {"t": 1.5}},
                ("body", "parameters", "t"),
                "less than or equal",
            ),
            (
                {**METHODS["ties"], "method": "ties", "base": None},
                ("body", "base"),
                "needs a base",
            ),
            (
                {
                    **METHODS["ties"],
                    "method": "ties",
                    "models": [{"model": "sg-b", "weight": 1, "density": 0}],
                },
                ("body", "models", 0, "density"),
                "greater than 0",
            ),
            (
                {**METHODS["linear"], "method": "linear", "parameters": {"t": 0.5}},
                ("body", "parameters", "t"),
                "takes no t",
            ),
            (
                {**METHODS["slerp"], "models": [{"model": "no-such-model"}]},
                ("body", "models", 0, "model"),
                "unknown model",
            ),
        ]
        for body, loc, words in refusals:
            refused = client.post(
                "/api/v1/merges", json={"name": "sg-refused", "method": "slerp"} | body
            )
            assert refused.status_code == 422, refused.text
            detail = refused.json()["detail"][0]
            assert tuple(detail["loc"]) == loc, refused.text
            assert words in detail["msg"], refused.text
        vocab = client.post(
            "/api/v1/merges",
            json={"name": "sg-refused", "method": "slerp", **refusals[0][0]},
        ).json()["detail"][0]["msg"]
        assert "sg-a" in vocab and "sg-wide-vocab" in vocab, vocab
        assert client.get("/api/v1/jobs").json()["total"] == jobs_before
        assert client.get("/api/v1/merges").json() == []

        refused_cli = platform.tp(
            "merge",
            "run",
            "sg-cli",
            "--method",
            "slerp",
            "--base",
            "sg-a",
            "--model",
            "sg-wide-vocab",
            "--param",
            "t=0.5",
            "--preview",
        )
        assert refused_cli.returncode == 2, refused_cli
        assert "vocab_size" in refused_cli.stderr
        previewed = platform.tp(
            "merge",
            "run",
            "sg-cli",
            "--method",
            "ties",
            "--base",
            "sg-a",
            "--model",
            "sg-b@weight=0.5,density=0.5",
            "--preview",
            check=True,
        ).stdout
        assert "fits together" in previewed and "takes seconds" in previewed
        preview = client.post(
            "/api/v1/merges/preview", json={"name": "sg-p", "method": "ties", **METHODS["ties"]}
        )
        assert preview.status_code == 200, preview.text
        estimate = preview.json()["estimate"]
        assert estimate["time_class"] == "seconds"
        assert estimate["parameters"] > 0 and estimate["ram_bytes"] > estimate["output_bytes"]
        assert "vocab_size" in preview.json()["checked"]

        merges = {}
        for method, body in METHODS.items():
            answer = client.post(
                "/api/v1/merges", json={"name": f"sg-{method}", "method": method, **body}
            )
            assert answer.status_code == 201, answer.text
            merges[method] = answer.json()
        taken = client.post(
            "/api/v1/merges", json={"name": "sg-linear", "method": "linear", **METHODS["linear"]}
        )
        assert taken.status_code == 409, taken.text

        done = {method: _wait_merge(client, m["id"]) for method, m in merges.items()}
        for method, merge in done.items():
            assert merge["status"] == "succeeded", (method, merge)
        runs = []
        for method, merge in done.items():
            job = client.get(f"/api/v1/jobs/{merge['job_id']}").json()
            assert job["progress"]["total"] == job["progress"]["step"] > 0, job
            runs.append(
                (
                    method,
                    str(platform.home / "runs" / str(job["id"]) / "attempt-1"),
                    str(tmp_path),
                    METHODS[method].get("seed", 0),
                )
            )
        checked = subprocess.run(
            [sys.executable, "-c", CLI_AND_COMPARE, json.dumps(runs)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr[-3000:]
        report = json.loads(checked.stdout.strip().splitlines()[-1])
        for method in METHODS:
            assert report[method]["same_names"], (method, report[method])
            assert report[method]["max_diff"] <= 1e-6, (method, report[method])
        assert report["generated_tokens"] > 0

        # Registered with its lineage and a model card that names the parents.
        models = {m["name"]: m for m in client.get("/api/v1/models").json()}
        slerp = models["sg-slerp"]
        assert slerp["source"] == "merge"
        lineage = client.get("/api/v1/models/sg-ties/lineage").json()
        names = {n["id"]: n["name"] for n in lineage["nodes"]}
        edges = {(names[e["parent"]], e["relation"]) for e in lineage["edges"]}
        assert edges == {("sg-a", "base"), ("sg-b", "merged"), ("sg-c", "merged")}
        # A sweep of two slerp candidates: each merged and evaluated, ranked, the best kept.
        swept = client.post(
            "/api/v1/merges/sweeps",
            json={
                "name": "sg-sweep",
                "merge": {"method": "slerp", **METHODS["slerp"]},
                "grid": {"t": [0.2, 0.8]},
                "evaluate": {
                    "dataset": "tiny-math-eval",
                    "scorer": "numeric",
                    "generation": {"max_samples": 6, "max_new_tokens": 8, "engine": "transformers"},
                },
                "mode": "max",
            },
        )
        assert swept.status_code == 201, swept.text
        deadline = time.monotonic() + 300
        sweep = swept.json()
        while sweep["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            sweep = client.get(f"/api/v1/merges/sweeps/{sweep['id']}").json()
        assert sweep["status"] == "succeeded", sweep
        board = sweep["leaderboard"]
        assert [row["rank"] for row in board] == [1, 2]
        assert sorted(row["values"]["t"] for row in board) == [0.2, 0.8]
        for row in board:
            evaluation = client.get(f"/api/v1/evaluations/{row['evaluation_id']}").json()
            assert evaluation["model_id"] == row["model_id"]
            assert evaluation["summary"]["numeric"]["mean"] == row["score"]
        scores = [row["score"] for row in board]
        assert scores == sorted(scores, reverse=True)
        best = board[0]
        assert all(
            r["index"] > best["index"]
            for r in board
            if r["score"] == best["score"] and r is not best
        )
        sweep_lineage = client.get("/api/v1/models/sg-sweep/lineage").json()
        top = {n["id"]: n["name"] for n in sweep_lineage["nodes"]}
        assert {
            (top[e["parent"]], e["relation"])
            for e in sweep_lineage["edges"]
            if top[e["child"]] == "sg-sweep"
        } == {(best["name"], "selected")}

        card = (Path(runs[1][1]) / "model" / "README.md").read_text()
        assert "`sg-a` (base)" in card and "`sg-b` (input" in card and "slerp" in card


def test_soup_and_selection_of_a_jobs_checkpoints(platform) -> None:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        trained = client.post(
            "/api/v1/jobs",
            json={
                "name": "surgery checkpoints",
                "algorithm": "sft",
                "model": "tiny-qwen2",
                "dataset": "tiny-sft",
                "hyperparameters": {"max_steps": 6, "save_steps": 2, "learning_rate": 1e-3},
            },
        )
        assert trained.status_code == 201, trained.text
        job_id = trained.json()["id"]
        job = platform.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert job["status"] == "succeeded", job

        bad = client.post(
            "/api/v1/models/soup", json={"name": "sg-soup", "job": job_id, "steps": [2, 5]}
        )
        assert bad.status_code == 422 and "steps" in str(bad.json()["detail"][0]["loc"])
        souped = platform.tp(
            "models", "soup", "sg-soup", "--job", str(job_id), "--last", "2", "--wait"
        )
        assert souped.returncode == 0, souped.stderr
        assert "succeeded" in souped.stdout and f"job-{job_id}-step-6" in souped.stdout
        result = client.get("/api/v1/merges").json()[0]
        assert result["status"] == "succeeded", result
        assert result["kind"] == "soup" and result["method"] == "linear"

        run_dir = platform.home / "runs" / str(job_id) / "attempt-1"
        soup_job = client.get(f"/api/v1/jobs/{result['job_id']}").json()
        soup_dir = platform.home / "runs" / str(soup_job["id"]) / "attempt-1" / "model"
        mean = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, torch\n"
                "from safetensors.torch import load_file\n"
                "a, b, s = (load_file(p + '/model.safetensors') for p in sys.argv[1:4])\n"
                "print(max(float(((a[k] + b[k]) / 2 - s[k]).abs().max()) for k in s))",
                str(run_dir / "checkpoints" / "checkpoint-4"),
                str(run_dir / "checkpoints" / "checkpoint-6"),
                str(soup_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert mean.returncode == 0, mean.stderr[-2000:]
        assert float(mean.stdout) <= 1e-6, mean.stdout

        lineage = client.get("/api/v1/models/sg-soup/lineage").json()
        names = {n["id"]: n["name"] for n in lineage["nodes"]}
        edges = {(names[e["child"]], names[e["parent"]], e["relation"]) for e in lineage["edges"]}
        assert (
            "sg-soup",
            f"job-{job_id}-step-4",
            "soup",
        ) in edges and ("sg-soup", f"job-{job_id}-step-6", "soup") in edges
        assert (f"job-{job_id}-step-6", "tiny-qwen2", "trained") in edges

        unknown = client.post(
            "/api/v1/models/select",
            json={"name": "sg-best", "job": job_id, "metric": "nope", "mode": "min"},
        )
        assert unknown.status_code == 422 and "loss" in unknown.text, unknown.text
        chose = platform.tp(
            "models", "select", "sg-best", "--job", str(job_id), "--metric", "loss", "--mode", "min"
        )
        assert chose.returncode == 0, chose.stderr
        assert "registered sg-best" in chose.stdout
        body = client.post(
            "/api/v1/models/select",
            json={"name": "sg-best-again", "job": job_id, "metric": "loss", "mode": "min"},
        ).json()
        values = {c["step"]: c["value"] for c in body["candidates"]}
        assert sorted(values) == [4, 6]  # the kept ones: save_total_limit is 2
        best = min(values.values())
        assert body["value"] == best
        assert body["step"] == min(s for s, v in values.items() if v == best)
        lineage = client.get("/api/v1/models/sg-best/lineage").json()
        relations = {e["relation"] for e in lineage["edges"]}
        assert relations == {"selected", "trained"}
        # A greedy soup: both checkpoints evaluated, the better first, the other kept only if
        # the soup of the two scores no worse.
        greedy = client.post(
            "/api/v1/merges/greedy-soups",
            json={
                "name": "sg-greedy",
                "job": job_id,
                "last": 2,
                "evaluate": {
                    "dataset": "tiny-math-eval",
                    "scorer": "numeric",
                    "generation": {"max_samples": 6, "max_new_tokens": 8, "engine": "transformers"},
                },
            },
        )
        assert greedy.status_code == 201, greedy.text
        soup_state = greedy.json()
        deadline = time.monotonic() + 240
        while soup_state["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            soup_state = client.get(f"/api/v1/merges/greedy-soups/{soup_state['id']}").json()
        assert soup_state["status"] == "succeeded", soup_state
        state = soup_state["state"]
        singles = {s["step"]: s for s in state["singles"]}
        for single in singles.values():
            evaluation = client.get(f"/api/v1/evaluations/{single['evaluation_id']}").json()
            assert evaluation["summary"]["numeric"]["mean"] == single["score"]
        first = state["order"][0]
        assert singles[first]["score"] == max(s["score"] for s in singles.values())
        [trial] = state["trials"]
        trial_eval = client.get(f"/api/v1/evaluations/{trial['evaluation_id']}").json()
        assert trial_eval["summary"]["numeric"]["mean"] == trial["score"]
        assert trial["kept"] == (trial["score"] >= singles[first]["score"])
        assert state["soup"] == ([first, trial["step"]] if trial["kept"] else [first])
        greedy_lineage = client.get("/api/v1/models/sg-greedy/lineage").json()
        top = {n["id"]: n["name"] for n in greedy_lineage["nodes"]}
        parents = {
            top[e["parent"]] for e in greedy_lineage["edges"] if top[e["child"]] == "sg-greedy"
        }
        assert parents == {f"job-{job_id}-step-{step}" for step in state["soup"]}

        shown = platform.tp("models", "lineage", "sg-soup", check=True).stdout
        assert f"<- soup: job-{job_id}-step-4" in shown and "<- trained: tiny-qwen2" in shown


def _wait_pipeline(client: Any, pipeline_id: int, timeout: float = 420) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/pipelines/{pipeline_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"pipeline {pipeline_id} did not end: {body}")


def test_a_lora_sft_hands_on_to_grpo_and_a_slerp_merge_stage_is_evaluated(platform) -> None:  # type: ignore[no-untyped-def]
    definition = {
        "name": "lora-grpo-merge",
        "stages": {
            "sft": {
                "job": {
                    "algorithm": "sft",
                    "model": "tiny-qwen2",
                    "dataset": "tiny-sft",
                    "hyperparameters": {
                        "max_steps": 10,
                        "learning_rate": 5e-3,
                        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                    },
                }
            },
            "grpo": {
                "depends_on": ["sft"],
                "job": {
                    "algorithm": "grpo",
                    "model": "${stages.sft.outputs.checkpoint}",
                    "dataset": "tiny-sft",
                    "hyperparameters": {
                        "max_steps": 2,
                        "per_device_train_batch_size": 8,
                        "num_generations": 4,
                        "max_completion_length": 8,
                        "reward": "exact_match",
                    },
                },
            },
            "merge": {
                "depends_on": ["grpo"],
                "merge": {
                    "method": "slerp",
                    "base": "${stages.sft.outputs.checkpoint}",
                    "models": [{"model": "${stages.grpo.outputs.checkpoint}"}],
                    "parameters": {"t": 0.5},
                },
            },
            "sweep": {
                "depends_on": ["grpo"],
                "merge": {
                    "method": "slerp",
                    "base": "${stages.sft.outputs.checkpoint}",
                    "models": [{"model": "${stages.grpo.outputs.checkpoint}"}],
                    "sweep": {
                        "grid": {"t": [0.25, 0.75]},
                        "evaluate": {
                            "dataset": "tiny-math-eval",
                            "generation": {
                                "max_samples": 4,
                                "max_new_tokens": 8,
                                "engine": "transformers",
                            },
                        },
                    },
                },
            },
            "evaluate": {
                "depends_on": ["merge"],
                "evaluate": {
                    "model": "${stages.merge.outputs.checkpoint}",
                    "dataset": "tiny-math-eval",
                    "max_new_tokens": 8,
                    "max_samples": 8,
                    "engine": "transformers",
                },
            },
        },
    }
    with platform.client() as client:
        wrong = json.loads(json.dumps(definition))
        wrong["stages"]["merge"]["merge"]["parameters"] = {}
        refused = client.post("/api/v1/pipelines", json={"definition": wrong})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"][-3:] == ["merge", "parameters", "t"]

        bad_grid = json.loads(json.dumps(definition))
        grid = {"t": [0.5], "models.3.weight": [1, 2]}
        bad_grid["stages"]["sweep"]["merge"]["sweep"]["grid"] = grid
        refused = client.post("/api/v1/pipelines", json={"definition": bad_grid})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"][-4:] == [
            "merge",
            "sweep",
            "grid",
            "models.3.weight",
        ]

        submitted = client.post("/api/v1/pipelines", json={"definition": definition})
        assert submitted.status_code == 201, submitted.text
        done = _wait_pipeline(client, submitted.json()["id"])
        stages = {s["name"]: s for s in done["stages"]}
        assert done["status"] == "succeeded", {
            n: (s["status"], s["reason"]) for n, s in stages.items()
        }

        # The SFT stage's model is an adapter; GRPO trained on it merged into its base.
        sft_job = client.get(f"/api/v1/jobs/{stages['sft']['job_id']}/plan").json()
        assert (Path(sft_job["run_dir"]) / "model" / "adapter_config.json").is_file()
        grpo_log = client.get(f"/api/v1/jobs/{stages['grpo']['job_id']}/logs").json()["text"]
        assert "LoRA adapter: merging it into its base" in grpo_log

        merged = stages["merge"]["outputs"]["checkpoint"]
        lineage = client.get(f"/api/v1/models/{merged}/lineage").json()
        names = {n["id"]: n["name"] for n in lineage["nodes"]}
        edges = {(names[e["child"]], names[e["parent"]], e["relation"]) for e in lineage["edges"]}
        sft_model, grpo_model = (stages[n]["outputs"]["checkpoint"] for n in ("sft", "grpo"))
        assert (merged, sft_model, "base") in edges and (merged, grpo_model, "merged") in edges
        assert (grpo_model, sft_model, "trained") in edges
        assert (sft_model, "tiny-qwen2", "trained") in edges
        merge = next(m for m in client.get("/api/v1/merges").json() if m["name"] == merged)
        assert merge["inputs"][0]["adapter_of"] == "tiny-qwen2"
        assert stages["evaluate"]["outputs"]["total"] == 8

        # The sweeping stage hands on its best candidate, as its leaderboard ranks them.
        swept = stages["sweep"]["outputs"]
        sweep = next(
            s
            for s in client.get("/api/v1/merges/sweeps").json()
            if s["name"] == swept["checkpoint"]
        )
        assert sweep["status"] == "succeeded" and len(sweep["leaderboard"]) == 2
        assert swept["score"] == sweep["leaderboard"][0]["score"]
