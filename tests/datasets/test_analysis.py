"""Dataset analyses equal an independent recount of the file (the tiny model's tokenizer and
chat template for lengths), and a sample renders with the tokens that count toward the loss."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest

from training_platform.datasets import analyses

ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# The model, embedder and vector work is the same on either database: SQLite only (the
# versions these write are tested on both in tests/api/test_datasets_api.py).


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(40):
        rows.append(
            {
                "instruction": "Add the numbers." if i % 3 else "Add these two numbers, please.",
                "input": f"{i} + {i * 7}" if i % 5 else "",
                "output": f"{i} + {i * 7} = {i * 8}." + (" Done." * (i % 4)),
                "tenant": ["acme", "globex", "initech"][i % 3],
                "difficulty": i % 4,
                **({"note": ""} if i % 10 == 0 else {}),
            }
        )
    rows.append(dict(rows[1]))  # an exact duplicate
    return rows


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    query = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
    return [{"role": "user", "content": query}, {"role": "assistant", "content": row["output"]}]


@ONE_DATABASE
def test_statistics_equal_a_recount_with_the_same_tokenizer(api, settings, engine) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    rows = _rows()
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert (
        api.post(
            "/api/v1/datasets", params={"name": "stats", "filename": "s.jsonl"}, content=body
        ).status_code
        == 201
    )
    options = {"model": "tiny-qwen2", "max_length": 40, "label_fields": ["tenant"], "bins": 7}
    started = api.post("/api/v1/datasets/stats/analyses", json=options)
    assert started.status_code == 202, started.text
    analysis_id = started.json()["id"]
    assert started.json()["status"] == "pending"
    again = api.post("/api/v1/datasets/stats/analyses", json=options)
    assert again.status_code == 200 and again.json()["id"] == analysis_id
    # the task's body, here (the end-to-end test runs it on a worker)
    assert analyses.run(engine, settings, analysis_id) == "succeeded"
    assert analyses.run(engine, settings, analysis_id) == "skipped"  # delivered twice
    done = api.get(f"/api/v1/datasets/stats/analyses/{analysis_id}").json()
    assert done["status"] == "succeeded", done
    result = done["result"]

    tokenizer = AutoTokenizer.from_pretrained(settings.home / "models/builtin/tiny-qwen2")
    totals = [
        len(
            tokenizer.apply_chat_template(_messages(r), tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in rows
    ]
    counts, edges = np.histogram(totals, bins=7)
    assert result["rows"] == 41 and result["unit"] == "tokens"
    assert result["lengths"]["total"]["counts"] == counts.tolist()
    assert result["lengths"]["total"]["edges"] == edges.tolist()
    over = sum(t > 40 for t in totals)
    assert 0 < over < 41
    assert result["truncation"] == {"max_length": 40, "rows": over, "share": over / 41}
    assistant = [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert (
        result["lengths"]["roles"]["assistant"]["counts"] == np.histogram(assistant, 7)[0].tolist()
    )
    tenants = Counter(r["tenant"] for r in rows)
    assert result["labels"]["tenant"]["values"] == [
        {"value": v, "count": n, "share": n / 41} for v, n in tenants.most_common()
    ]
    difficulty = np.histogram([r["difficulty"] for r in rows], bins=7)
    assert result["numeric"]["difficulty"]["counts"] == difficulty[0].tolist()
    assert result["fields"]["note"] == {"types": {"string": 4}, "missing": 37, "empty": 4}
    assert result["fields"]["input"]["empty"] == sum(1 for r in rows if not r["input"])
    assert result["duplicates"] == {"exact_rows": 1, "exact_groups": 1}


@ONE_DATABASE
def test_a_sample_renders_with_its_loss_mask(api) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "4."},
            ]
        }
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    api.post("/api/v1/datasets", params={"name": "one", "filename": "o.jsonl"}, content=body)
    shown = api.get("/api/v1/datasets/one/rows/1/render", params={"model": "tiny-qwen2"})
    assert shown.status_code == 200, shown.text
    sample = shown.json()
    learned = "".join(s["text"] for s in sample["segments"] if s["loss"])
    assert "4." in learned and "2 + 2" not in learned and "Be brief" not in learned
    assert sample["loss_tokens"] < sample["tokens"]
    everything = api.get(
        "/api/v1/datasets/one/rows/1/render",
        params={"model": "tiny-qwen2", "assistant_only_loss": "false", "max_length": 5},
    ).json()
    assert everything["loss_tokens"] == everything["tokens"]
    assert everything["segments"][-1]["truncated"]
    assert (
        api.get("/api/v1/datasets/one/rows/9/render", params={"model": "tiny-qwen2"}).status_code
        == 404
    )
