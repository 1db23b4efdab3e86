"""Deduplication on a file with planted duplicates: each stage (exact hash, MinHash LSH,
MiniLM embeddings in Milvus Lite) finds its planted set; the review is written as a version
only when accepted, and a job pins that version. Milvus Lite is never open in two processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from training_platform.datasets import dedups

BASE = [
    ("How do I reset a forgotten email password?", "Use the account recovery page."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("Which planet is known as the red planet?", "Mars."),
    ("How many legs does a spider have?", "Eight."),
    ("What is the capital city of Australia?", "Canberra."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("Name a prime number between 20 and 30.", "23."),
    ("What gas do plants absorb from the air?", "Carbon dioxide."),
    ("Suggest a name for a pet goldfish.", "Bubbles."),
    ("What does HTTP stand for?", "Hypertext Transfer Protocol."),
    ("How long does an average marathon take to run?", "About four hours."),
    ("Which instrument has 88 keys?", "The piano."),
    ("What year did the first human land on the Moon?", "1969."),
    ("Recommend a good stretch for lower back pain.", "Try the child's pose."),
    ("What is the chemical symbol for gold?", "Au."),
    ("How do you say hello in Japanese?", "Konnichiwa."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("Give me a synonym for happy.", "Joyful."),
    ("How many minutes are in a day?", "1440."),
    ("Which country is famous for maple syrup?", "Canada."),
    ("What should I pack for a winter hiking trip?", "Layers, a hat and gloves."),
    ("Who wrote the play Hamlet?", "William Shakespeare."),
    ("What is the square root of 144?", "12."),
]
EXACT = {25: 3, 26: 11}  # planted row -> the row it copies (case and spaces changed)
NEAR = {27: 6, 28: 15}  # a few characters edited
PARAPHRASED = {29: 1, 30: 4}  # the same question in other words
NEAR_TEXT = {
    27: ("What is the capital city of Australia ?", "Canberra"),
    28: ("Recommend a good stretch for lower back pain!", "Try the child's pose."),
}
PARAPHRASE_TEXT = {
    29: (
        "I forgot the password of my email, how can I reset it?",
        "Use the account recovery page.",
    ),
    30: ("Which planet do people call the red planet?", "Mars."),
}

ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# The model, embedder and vector work is the same on either database: SQLite only (the
# versions these write are tested on both in tests/api/test_datasets_api.py).


def _rows() -> list[dict[str, Any]]:
    rows = [{"prompt": q, "response": a} for q, a in BASE]
    for source in EXACT.values():
        q, a = BASE[source - 1]
        rows.append({"prompt": "  " + q.upper() + " ", "response": a.upper()})
    for texts in (NEAR_TEXT, PARAPHRASE_TEXT):
        for number in sorted(texts):
            q, a = texts[number]
            rows.append({"prompt": q, "response": a})
    assert len(rows) == 30
    return rows


def _body(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _precision_recall(found: set[int], planted: set[int]) -> tuple[float, float]:
    hits = len(found & planted)
    return (hits / len(found) if found else 1.0), hits / len(planted)


@ONE_DATABASE
def test_each_stage_finds_its_planted_duplicates_and_accepting_writes_a_version(  # type: ignore[no-untyped-def]
    api, settings, engine
) -> None:
    assert (
        api.post(
            "/api/v1/datasets",
            params={"name": "planted", "filename": "p.jsonl"},
            content=_body(_rows()),
        ).status_code
        == 201
    )
    bad = api.post("/api/v1/datasets/planted/dedups", json={"stages": ["fuzzy"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "stages"]
    started = api.post(
        "/api/v1/datasets/planted/dedups",
        json={"near_threshold": 0.7, "semantic_threshold": 0.8},
    )
    assert started.status_code == 202, started.text
    dedup_id = started.json()["id"]
    assert dedups.run(engine, settings, dedup_id) == "review"  # the task's body, here
    review = api.get(f"/api/v1/datasets/planted/dedups/{dedup_id}").json()["review"]
    by_stage: dict[str, set[int]] = {}
    for cluster in review["clusters"]:
        by_stage.setdefault(cluster["stage"], set()).update(d["row"] for d in cluster["dropped"])
    report = {}
    for stage, planted in (("exact", EXACT), ("near", NEAR), ("semantic", PARAPHRASED)):
        precision, recall = _precision_recall(by_stage.get(stage, set()), set(planted))
        report[stage] = (precision, recall)
        kept = {c["kept"]["row"] for c in review["clusters"] if c["stage"] == stage}
        assert kept == set(planted.values()), (stage, review["clusters"])
    print(f"dedup precision/recall per stage: {report}")
    assert all(pr == (1.0, 1.0) for pr in report.values()), report
    assert review["stages"] == {
        "exact": {"clusters": 2, "dropped": 2},
        "near": {"clusters": 2, "dropped": 2},
        "semantic": {"clusters": 2, "dropped": 2, "method": "neighbours"},
    }
    assert (review["rows"], review["kept"], review["dropped_rows"]) == (30, 24, list(range(25, 31)))

    # nothing is written before the review is accepted
    assert api.get("/api/v1/datasets/planted").json()["version"] == 1
    accepted = api.post(f"/api/v1/datasets/planted/dedups/{dedup_id}/accept")
    assert accepted.status_code == 201, accepted.text
    assert (accepted.json()["number"], accepted.json()["rows"], accepted.json()["origin"]) == (
        2,
        24,
        "dedup",
    )
    assert accepted.json()["manifest"]["dedup"]["dropped"] == 6
    again = api.post(f"/api/v1/datasets/planted/dedups/{dedup_id}/accept")
    assert again.status_code == 409
    diff = api.get("/api/v1/datasets/planted/diff", params={"base": 1}).json()
    assert (diff["added"], diff["removed"]) == (0, 6)
    job = api.post(
        "/api/v1/jobs",
        json={"name": "deduped", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "planted"},
    )
    assert job.status_code == 201 and job.json()["dataset_version"] == 2

    # rows like a text, and like a row, from the vector store (what the search task runs;
    # the CLI test asks a worker through the API)
    from sqlmodel import Session

    from training_platform.catalog.models import DatasetEntry
    from training_platform.datasets import versions

    with Session(engine) as session:
        entry = session.exec(select(DatasetEntry).where(DatasetEntry.name == "planted")).one()
        newest = versions.get(session=session, entry=entry, number=2)
        ask = {"session": session, "settings": settings, "entry": entry, "version": newest}
        found = dedups.search(**ask, query="Who made the Mona Lisa painting?", row=None, limit=5)
        like = dedups.search(**ask, query=None, row=2, limit=3)
    assert found[0][0] == 3
    assert 2 not in [n for n, _ in like] and len(like) == 3
    refused = api.post("/api/v1/datasets/planted/search", json={"query": "x", "row": 2})
    assert refused.status_code == 422 and "exactly one" in refused.text

    # deleting the dataset removes its search collection from the vector store
    from training_platform.datasets.vectors import collection_name, open_store

    dataset_id = api.get("/api/v1/datasets/planted").json()["id"]
    with open_store(settings) as store:
        assert store.has(collection_name(dataset_id, 2))
    job_id = job.json()["id"]
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert api.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert api.delete("/api/v1/datasets/planted").status_code == 204
    with open_store(settings) as store:
        assert not store.has(collection_name(dataset_id, 2))


@ONE_DATABASE
def test_contamination_against_an_evaluation_set(api, settings, engine) -> None:  # type: ignore[no-untyped-def]
    train = [{"prompt": q, "response": a} for q, a in BASE[:10]]
    held_out = [
        {"prompt": BASE[4][0], "answer": BASE[4][1]},
        {"prompt": "Unrelated?", "answer": "x"},
    ]
    for name, rows in (("train-c", train), ("eval-c", held_out)):
        api.post(
            "/api/v1/datasets",
            params={"name": name, "filename": f"{name}.jsonl"},
            content=_body(rows),
        )
    started = api.post(
        "/api/v1/datasets/train-c/dedups", json={"stages": ["exact", "near"], "against": "eval-c@1"}
    )
    assert started.status_code == 202, started.text
    assert dedups.run(engine, settings, started.json()["id"]) == "review"
    review = api.get(f"/api/v1/datasets/train-c/dedups/{started.json()['id']}").json()["review"]
    assert review["dropped_rows"] == [5]
    (cluster,) = review["clusters"]
    assert cluster["kept"]["against"] and cluster["kept"]["row"] == 1


HOLD = """
import sys, time
from pathlib import Path
from training_platform.core.settings import Settings
from training_platform.datasets.vectors import open_store
settings = Settings(home=Path(sys.argv[1]), vector_lock_timeout_s=60)
with open_store(settings):
    opened = time.time()
    time.sleep(float(sys.argv[2]))
    closed = time.time()
print(opened, closed)
"""


def _hold(home: Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(home), str(seconds)], stdout=subprocess.PIPE, text=True
    )


def test_milvus_lite_is_never_open_in_two_processes(tmp_path: Path) -> None:
    from training_platform.core.settings import Settings
    from training_platform.datasets.vectors import VectorStoreBusy, open_store

    holders = [_hold(tmp_path, 2.0) for _ in range(2)]
    spans = sorted(
        tuple(float(x) for x in process.communicate(timeout=120)[0].split()) for process in holders
    )
    assert all(process.returncode == 0 for process in holders)
    assert spans[1][0] >= spans[0][1], spans  # the second opened after the first closed
    busy = _hold(tmp_path, 4.0)
    lock = tmp_path / "vectors" / "store.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().startswith(f"pid {busy.pid}")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(VectorStoreBusy, match=rf"busy \(pid {busy.pid}\)"):  # noqa: SIM117
        with open_store(Settings(home=tmp_path, vector_lock_timeout_s=0.5)):
            pass
    busy.communicate(timeout=60)


def test_a_milvus_server_named_by_tp_milvus_uri_is_used_without_the_lock(tmp_path: Path) -> None:
    import socket

    import numpy as np

    from training_platform.core.settings import Settings
    from training_platform.datasets.vectors import open_store

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = Path(sys.executable).parent / "milvus-lite"
    server = subprocess.Popen(
        [
            str(binary),
            "server",
            "--data-dir",
            str(tmp_path / "server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
        settings = Settings(home=tmp_path / "home", milvus_uri=f"http://127.0.0.1:{port}")
        vectors = np.eye(4, 384, dtype="float32")
        with open_store(settings) as store, open_store(settings) as second:  # no lock needed
            store.create("probe")
            store.insert("probe", [1, 2, 3, 4], vectors)
            hits = second.search("probe", vectors[2:3], 2)
        assert hits[0][0] == (3, pytest.approx(1.0, abs=1e-5))
        assert not (tmp_path / "home" / "vectors").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_semdedup_clusters_then_compares_within_each_cluster() -> None:
    import numpy as np

    from training_platform.datasets import dedup

    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 384))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[:20] + rng.normal(scale=0.01, size=(20, 384))  # near-copies of rows 1-20
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.vstack([base, copies]).astype("float32")
    numbers = list(range(1, 321))
    pairs = dedup.semdedup_pairs(numbers, vectors, 0.95, clusters=8)
    assert set(pairs) == {(i, 300 + i) for i in range(1, 21)}
    assert all(score >= 0.95 for score in pairs.values())
    assert dedup.semdedup_pairs(numbers, vectors, 0.95, clusters=1).keys() == pairs.keys()


def test_a_large_set_is_deduplicated_semantically_by_clusters(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from training_platform.datasets import dedup

    monkeypatch.setattr(dedup, "SEMDEDUP_MIN_ROWS", 10)
    monkeypatch.setattr(dedup, "ROWS_PER_CLUSTER", 8)
    rows = {i + 1: dedup.row_text("prompt_response", r, i + 1) for i, r in enumerate(_rows())}

    def no_store(*_: object) -> list[list[tuple[int, float]]]:
        raise AssertionError("a clustered set asks no neighbours of the vector store")

    review = dedup.run(
        rows, stages=["semantic"], near_threshold=0.8, semantic_threshold=0.8, search=no_store
    )
    assert review["stages"]["semantic"]["method"] == "semdedup"
    planted = {**EXACT, **NEAR, **PARAPHRASED}
    dropped = set(review["dropped_rows"])
    # precision 1; recall as k-means allows (a pair it splits across clusters is not compared)
    assert dropped <= set(planted) and len(dropped) >= 4, review["clusters"]
    assert all(
        c["kept"]["row"] == planted[d["row"]] for c in review["clusters"] for d in c["dropped"]
    )


BUILD = """
import sys
from pathlib import Path
import numpy as np
from training_platform.core.settings import Settings
from training_platform.datasets.vectors import open_store
with open_store(Settings(home=Path(sys.argv[1]))) as store:
    store.create("built-elsewhere")
    store.insert("built-elsewhere", [1, 2, 3], np.eye(3, 384, dtype="float32"))
"""


def test_a_collection_another_process_built_is_searched_after_the_store_opens_again(
    tmp_path: Path,
) -> None:
    import numpy as np

    from training_platform.core.settings import Settings
    from training_platform.datasets.vectors import open_store

    subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], check=True, timeout=120)
    with open_store(Settings(home=tmp_path)) as store:
        hits = store.search("built-elsewhere", np.eye(3, 384, dtype="float32")[1:2], 1)
    assert hits[0][0][0] == 2
