"""Read dataset files row by row with the number a user would look for (line or row)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".parquet")


class UnreadableFile(ValueError):
    """The file is not a dataset we can read (wrong suffix, not JSON, not Parquet)."""


def rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(number, row) pairs: JSONL line numbers, 1-based positions for JSON and Parquet.

    A JSONL line that is not JSON yields a ValueError in place of its row, so callers can
    report it by line number and go on.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_bytes())
        except ValueError as error:
            raise UnreadableFile(f"not valid JSON: {error}") from None
        if not isinstance(data, list):
            raise UnreadableFile("a .json dataset must be an array of rows")
        yield from enumerate(data, start=1)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        raise UnreadableFile(f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as error:
                yield number, ValueError(f"not valid JSON ({error.args[0]})")


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a non-Parquet file
        raise UnreadableFile(f"not a Parquet file: {error}") from None
    number = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row
