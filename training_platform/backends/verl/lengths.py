"""The longest example of a verl SFT dataset, counted as verl's multi-turn SFT dataset counts it.

verl renders each message on its own through the chat template and drops, from every message
after the first, the system prompt the template adds to it; an example longer than
`data.max_length` with `truncation: error` raises in the middle of a run, whenever that row
comes up. Job preparation counts the examples first (jobs/preparation.py), so such a job fails
before it is queued, naming `hyperparameters.max_length`. tests/backends/test_verl_contract.py
holds this count to verl's own on the bundled data.

Runs where datasets are prepared (the general worker); it needs the model's tokenizer there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any


def _ids(encoded: Any) -> list[int]:
    # transformers 5 answers apply_chat_template(tokenize=True) with a BatchEncoding.
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def system_prompt_length(tokenizer: Any) -> int:
    """Tokens of the system prompt the template puts before a lone message (verl's rule:
    one empty user turn against two, the difference is one turn)."""
    empty = {"role": "user", "content": ""}
    one = _ids(tokenizer.apply_chat_template([empty], add_generation_prompt=False, tokenize=True))
    two = _ids(
        tokenizer.apply_chat_template([empty, empty], add_generation_prompt=False, tokenize=True)
    )
    return len(one) - (len(two) - len(one))


def example_length(tokenizer: Any, messages: Sequence[Mapping[str, Any]], system: int) -> int:
    """An example's tokens as verl SFT assembles them."""
    total = 0
    for index, message in enumerate(messages):
        ids = _ids(
            tokenizer.apply_chat_template(
                [dict(message)], add_generation_prompt=False, tokenize=True
            )
        )
        total += len(ids) - (system if index != 0 and message["role"] != "system" else 0)
    return total


def longest_example(model_path: str, dataset_path: Path) -> tuple[int, int]:
    """(tokens, row index) of the longest example of a prepared SFT parquet file. Counted
    once per model and version of the file in a worker process: jobs on the same data do
    not tokenize it again."""
    return _longest(model_path, str(dataset_path), dataset_path.stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _longest(model_path: str, dataset_path: str, _version: int) -> tuple[int, int]:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    system = system_prompt_length(tokenizer)
    rows = pq.read_table(dataset_path, columns=["messages"]).column("messages").to_pylist()
    longest, where = 0, -1
    for index, messages in enumerate(rows):
        length = example_length(tokenizer, messages, system)
        if length > longest:
            longest, where = length, index
    return longest, where
