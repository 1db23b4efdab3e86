"""Dataset service: row-by-row checks with numbers, size limits, content storage, preparation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session

from training_platform.core.errors import Conflict, InvalidInput
from training_platform.datasets import service


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_inspect_reports_bad_rows_by_line_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n'
        "\n"
        '{"prompt": "c"}\n'
        "not json\n"
        '{"prompt": "e", "response": "f"}\n'
    )
    found = service.inspect(path)
    assert found.format == "prompt_response" and found.rows == 4 and found.bad_rows == 2
    assert [number for number, _ in found.errors] == [3, 4]
    assert "row 3: 'response' must be a non-empty string" in found.describe_errors()
    assert "row 4: not valid JSON" in found.describe_errors()


def test_inspect_refuses_unknown_shapes_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot tell the format"):
        service.inspect(_jsonl(tmp_path / "x.jsonl", [{"text": "t"}]))
    with pytest.raises(InvalidInput, match="no rows"):
        service.inspect(_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(InvalidInput, match="unknown format"):
        service.inspect(_jsonl(tmp_path / "y.jsonl", [{"prompt": "a", "answer": "1"}]), "csv")
    (tmp_path / "z.json").write_text('{"not": "a list"}')
    with pytest.raises(InvalidInput, match="array of rows"):
        service.inspect(tmp_path / "z.json")


def test_parquet_and_json_arrays_are_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.parquet", "d.json"):
        found = service.inspect(tmp_path / name)
        assert (found.format, found.rows, found.errors) == ("prompt_answer", 5, [])


def test_receive_enforces_the_size_limit_while_streaming(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"max_upload_mb": 1})
    chunks = (b"x" * 400_000 for _ in range(5))
    with pytest.raises(service.UploadTooLarge) as error:
        service.receive(settings, chunks, "big.jsonl")
    assert error.value.status_code == 413
    assert list((settings.datasets_dir / "incoming").iterdir()) == []
    with pytest.raises(InvalidInput, match="unsupported file type"):
        service.receive(settings, [b"{}"], "data.csv")


def test_upload_is_stored_by_content_and_refused_when_bad(sqlite_settings, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    good = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3
    received, sha, size = service.receive(
        sqlite_settings, [("".join(json.dumps(r) + "\n" for r in good)).encode()], "p.jsonl"
    )
    with Session(sqlite_engine) as session:
        entry = service.register_upload(
            session=session,
            settings=sqlite_settings,
            name="prefs",
            received=received,
            sha256=sha,
            size=size,
            fmt=None,
            description="",
        )
        session.commit()
        assert (entry.format, entry.rows, entry.source) == ("preference", 3, "upload")
        assert (sqlite_settings.home / entry.path).name == f"{sha}.jsonl"
        bad, sha2, size2 = service.receive(
            sqlite_settings, [b'{"prompt": "q", "chosen": "a"}\n'], "b.jsonl"
        )
        with pytest.raises(
            InvalidInput,
            match="1 of 1 rows do not fit format 'preference': row 1: 'rejected' must be",
        ):
            service.register_upload(
                session=session,
                settings=sqlite_settings,
                name="bad",
                received=bad,
                sha256=sha2,
                size=size2,
                fmt="preference",
                description="",
            )
        assert not bad.exists()
        again, sha3, size3 = service.receive(sqlite_settings, [b"{}"], "c.jsonl")
        with pytest.raises(Conflict, match="exists already"):
            service.register_upload(
                session=session,
                settings=sqlite_settings,
                name="prefs",
                received=again,
                sha256=sha3,
                size=size3,
                fmt=None,
                description="",
            )
        assert not again.exists()


def test_prepare_writes_the_task_layout_once(sqlite_settings, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from training_platform.catalog import service as catalog

    with Session(sqlite_engine) as session:
        math = catalog.resolve_dataset(session=session, ref="tiny-math")
        sft = catalog.resolve_dataset(session=session, ref="tiny-sft")
    prepared = service.prepare(sqlite_settings, math, "rl")
    assert prepared.path == service.prepared_path(sqlite_settings, math, "rl")
    table = pq.read_table(prepared.path).to_pylist()
    assert len(table) == prepared.rows == 200
    assert set(table[0]) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert table[0]["reward_model"]["ground_truth"].lstrip("-").isdigit()
    mtime = prepared.path.stat().st_mtime_ns
    assert service.prepare(sqlite_settings, math, "rl").sha256 == prepared.sha256
    assert prepared.path.stat().st_mtime_ns == mtime  # cached, not rebuilt
    sft_rows = pq.read_table(service.prepare(sqlite_settings, sft, "sft").path).to_pylist()
    assert set(sft_rows[0]) == {"messages"} and sft_rows[0]["messages"][-1]["role"] == "assistant"
    # Chats feed rl too: the last assistant turn is the reference.
    as_rl = pq.read_table(service.prepare(sqlite_settings, sft, "rl").path).to_pylist()
    assert as_rl[0]["prompt"] == sft_rows[0]["messages"][:-1]
    assert as_rl[0]["reward_model"]["ground_truth"] == sft_rows[0]["messages"][-1]["content"]
    with pytest.raises(InvalidInput, match="cannot feed"):
        service.prepare(sqlite_settings, math, "sft")


def test_a_validation_split_holds_rows_out_reproducibly(sqlite_settings, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from training_platform.catalog import service as catalog

    with Session(sqlite_engine) as session:
        math = catalog.resolve_dataset(session=session, ref="tiny-math")
    whole = pq.read_table(service.prepare(sqlite_settings, math, "rl").path).to_pylist()
    split = {"fraction": 0.1, "seed": 3}
    prepared = service.prepare(sqlite_settings, math, "rl", split)
    assert prepared.validation is not None
    assert (prepared.rows, prepared.validation.rows) == (180, 20)
    train = pq.read_table(prepared.path).to_pylist()
    held = pq.read_table(prepared.validation.path).to_pylist()
    key = lambda row: row["extra_info"]["index"]  # noqa: E731
    assert sorted(map(key, train + held)) == sorted(map(key, whole))  # a partition
    assert not {key(r) for r in train} & {key(r) for r in held}
    again = service.prepare(sqlite_settings, math, "rl", {"fraction": 0.1, "seed": 3})
    assert again.validation is not None and again.validation.sha256 == prepared.validation.sha256
    other = service.prepare(sqlite_settings, math, "rl", {"fraction": 0.1, "seed": 4})
    assert other.validation is not None and other.validation.sha256 != prepared.validation.sha256
    with pytest.raises(InvalidInput, match="holds out 0 of 200 rows"):
        service.prepare(sqlite_settings, math, "rl", {"field": "difficulty", "value": "none"})


def test_a_split_by_field_holds_out_the_rows_with_its_value() -> None:
    rows = {
        1: {"split": "train"},
        2: {"split": "validation"},
        3: {"x": 1},
        4: {"split": "validation"},
    }
    assert service.held_out([1, 2, 3, 4], rows, {"field": "split", "value": "validation"}) == {2, 4}
    drawn = service.held_out(list(range(1, 11)), {}, {"fraction": 0.25, "seed": 0})
    assert len(drawn) == 2 and drawn == service.held_out(
        list(range(1, 11)), {}, {"fraction": 0.25, "seed": 0}
    )
