"""Statistics of a dataset version, and one sample as the trainer sees it.

`analyze` reads the source rows once: fields with their types and missing or empty counts, the
user's label fields (value counts and shares), numeric fields (histograms), exact duplicates,
and lengths (per chat role and per task field, with a model's tokenizer and chat template in
tokens, else in characters), the share a max length truncates and, for preference data, the
length bias (chosen minus rejected).
`render` shows one row through the chat template with the tokens that count toward the loss.
Histograms are numpy's: `bins` equal-width bins from the smallest to the largest value.
No database or HTTP here: the task loads the tokenizer and stores the result.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from training_platform.datasets import formats

MAX_LABEL_VALUES = 50
UNIT_TOKENS, UNIT_CHARACTERS = "tokens", "characters"


class Lengths:
    """Lengths in tokens of a tokenizer (chat template included), or in characters without one."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self.chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        self.unit = UNIT_TOKENS if tokenizer is not None else UNIT_CHARACTERS

    def text(self, text: str) -> int:
        """The length of a text on its own (no special tokens)."""
        if self.tokenizer is None:
            return len(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_ids(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
        """Token ids of a conversation as the trainer builds it (its chat template)."""
        if not self.chat:
            text = "\n".join(m["content"] for m in messages)
            return list(self.tokenizer(text)["input_ids"])  # type: ignore[misc]
        ids = self.tokenizer.apply_chat_template(  # type: ignore[union-attr]
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )["input_ids"]
        return list(ids)

    def conversation(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> int:
        """The length of a conversation as the trainer builds it."""
        if self.tokenizer is None:
            return sum(len(m["content"]) for m in messages)
        return len(self.chat_ids(messages, generation_prompt=generation_prompt))


def histogram(values: Sequence[float], bins: int) -> dict[str, Any]:
    """Counts in `bins` equal-width bins from min to max, with summary statistics."""
    import numpy as np

    if not values:
        return {"n": 0, "edges": [], "counts": []}
    array = np.asarray(values, dtype=float)
    counts, edges = np.histogram(array, bins=bins)
    return {
        "n": len(values),
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
    }


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _empty(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str | list | dict) and not value)
        or (isinstance(value, str) and not value.strip())
    )


_SPACE = re.compile(r"\s+")


def strings_of(value: Any, skip: frozenset[str], *, sort_keys: bool = False) -> list[str]:
    """Every string inside a task row, in order, leaving out the values of the `skip` keys."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        keys = sorted(value) if sort_keys else list(value)
        return [
            s
            for key in keys
            if key not in skip
            for s in strings_of(value[key], skip, sort_keys=sort_keys)
        ]
    if isinstance(value, list):
        return [s for item in value for s in strings_of(item, skip, sort_keys=sort_keys)]
    return []


_NOT_TEXT = frozenset({"extra_info", "index"})


def normalized_text(row: Any) -> str:
    """A row's text for exact-duplicate checks: its task row's strings, lower case, spaces
    collapsed (so two files that differ only in formatting still match)."""
    parts = strings_of(row, _NOT_TEXT, sort_keys=True)
    return "\u241f".join(_SPACE.sub(" ", part).strip().casefold() for part in parts)


class _Stats:
    def __init__(self, fmt: str, lengths: Lengths, label_fields: Sequence[str]) -> None:
        self.fmt, self.task, self.lengths = fmt, formats.TASK_OF_FORMAT[fmt], lengths
        self.rows = 0
        self.types: dict[str, Counter[str]] = {}
        self.empty: Counter[str] = Counter()
        self.labels = {name: Counter[str]() for name in label_fields}
        self.label_missing: Counter[str] = Counter()
        self.numbers: dict[str, list[float]] = {}
        self.not_numeric: set[str] = set()
        self.roles: dict[str, list[int]] = {}
        self.fields: dict[str, list[int]] = {}
        self.totals: list[int] = []
        self.bias: list[int] = []
        self.seen: Counter[str] = Counter()

    def add(self, number: int, row: dict[str, Any]) -> None:
        self.rows += 1
        for key, value in row.items():
            self.types.setdefault(key, Counter())[_kind(value)] += 1
            if _empty(value):
                self.empty[key] += 1
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.numbers.setdefault(key, []).append(float(value))
            elif value is not None:
                self.not_numeric.add(key)
        for name, counts in self.labels.items():
            value = row.get(name)
            if value is None or isinstance(value, list | dict):
                self.label_missing[name] += 1
            else:
                counts[str(value)] += 1
        task_row = formats.convert_row(self.fmt, self.task, row, number)
        self.seen[normalized_text(task_row)] += 1
        self._lengths(task_row)

    def _field(self, name: str, value: int) -> None:
        self.fields.setdefault(name, []).append(value)

    def _messages(self, messages: list[dict[str, str]]) -> None:
        for message in messages:
            self.roles.setdefault(message["role"], []).append(self.lengths.text(message["content"]))

    def _lengths(self, task_row: dict[str, Any]) -> None:
        measure = self.lengths
        if self.task == "sft":
            messages = task_row["messages"]
            self._messages(messages)
            total = measure.conversation(messages, generation_prompt=False)
            completion = sum(
                measure.text(m["content"]) for m in messages if m["role"] == "assistant"
            )
            self._field("completion", completion)
        elif self.task == "preference":
            prompt = task_row["prompt"]
            self._messages(prompt)
            chosen, rejected = measure.text(task_row["chosen"]), measure.text(task_row["rejected"])
            prompt_length = measure.conversation(prompt, generation_prompt=True)
            self._field("prompt", prompt_length)
            self._field("chosen", chosen)
            self._field("rejected", rejected)
            self.bias.append(chosen - rejected)
            total = prompt_length + max(chosen, rejected)
        else:
            prompt = task_row["prompt"]
            self._messages(prompt)
            total = measure.conversation(prompt, generation_prompt=True)
            self._field("prompt", total)
            self._field("reference", measure.text(task_row["reward_model"]["ground_truth"]))
        self.totals.append(total)

    def result(self, max_length: int | None, bins: int) -> dict[str, Any]:
        duplicates = sum(count - 1 for count in self.seen.values() if count > 1)
        result: dict[str, Any] = {
            "rows": self.rows,
            "format": self.fmt,
            "task": self.task,
            "unit": self.lengths.unit,
            "fields": {
                name: {
                    "types": dict(kinds),
                    "missing": self.rows - sum(kinds.values()),
                    "empty": self.empty[name],
                }
                for name, kinds in sorted(self.types.items())
            },
            "labels": {
                name: {
                    "distinct": len(counts),
                    "missing": self.label_missing[name],
                    "values": [
                        {"value": value, "count": count, "share": count / self.rows}
                        for value, count in counts.most_common(MAX_LABEL_VALUES)
                    ],
                }
                for name, counts in self.labels.items()
            },
            "numeric": {
                name: histogram(values, bins)
                for name, values in sorted(self.numbers.items())
                if name not in self.not_numeric
            },
            "lengths": {
                "total": histogram(self.totals, bins),
                "roles": {role: histogram(v, bins) for role, v in sorted(self.roles.items())},
                "fields": {name: histogram(v, bins) for name, v in sorted(self.fields.items())},
            },
            "duplicates": {
                "exact_rows": duplicates,
                "exact_groups": sum(1 for count in self.seen.values() if count > 1),
            },
        }
        if max_length is not None:
            over = sum(1 for total in self.totals if total > max_length)
            result["truncation"] = {
                "max_length": max_length,
                "rows": over,
                "share": over / self.rows if self.rows else 0.0,
            }
        if self.task == "preference":
            result["preference_bias"] = {
                "chosen_minus_rejected": histogram(self.bias, bins),
                "chosen_longer_share": sum(1 for b in self.bias if b > 0) / len(self.bias),
            }
        return result


def analyze(
    rows: Iterable[tuple[int, Any]],
    fmt: str,
    *,
    lengths: Lengths,
    max_length: int | None = None,
    label_fields: Sequence[str] = (),
    bins: int = 20,
) -> dict[str, Any]:
    """The statistics of a version's rows (bad rows are skipped: uploads are checked)."""
    stats = _Stats(fmt, lengths, label_fields)
    for number, row in rows:
        if isinstance(row, dict):
            try:
                stats.add(number, row)
            except formats.RowError:
                continue
    return stats.result(max_length, bins)


def render(
    row: Any,
    fmt: str,
    number: int,
    *,
    tokenizer: Any,
    assistant_only: bool = True,
    max_length: int | None = None,
) -> dict[str, Any]:
    """One row as the trainer sees it: the chat template's text in segments, each marked
    whether its tokens count toward the loss (and whether max_length cuts them off)."""
    task = formats.TASK_OF_FORMAT[fmt]
    task_row = formats.convert_row(fmt, task, row, number)
    if task == "sft":
        ids, mask, note = _sft_mask(tokenizer, task_row["messages"], assistant_only)
        parts = [("", ids, mask)]
    elif task == "preference":
        prompt = tokenizer.apply_chat_template(
            task_row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        parts = [("prompt", list(prompt), [0] * len(prompt))]
        for side in ("chosen", "rejected"):
            completion = tokenizer(task_row[side], add_special_tokens=False)["input_ids"]
            parts.append((side, list(completion), [1] * len(completion)))
        note = "DPO: the loss compares the chosen and the rejected completion after the prompt"
    else:
        prompt = tokenizer.apply_chat_template(
            task_row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        parts = [("prompt", list(prompt), [0] * len(prompt))]
        note = "RL: no token of the prompt counts; the loss is on the model's own completions"
    segments = []
    total = loss = 0
    for part, ids, mask in parts:
        position = 0
        for start, end in _runs(mask):
            chunk = ids[start:end]
            cut = max_length is not None and total + position + (end - start) > max_length
            segments.append(
                {
                    "part": part,
                    "text": tokenizer.decode(chunk),
                    "tokens": len(chunk),
                    "loss": bool(mask[start]),
                    "truncated": bool(cut),
                }
            )
            position += end - start
            loss += len(chunk) if mask[start] else 0
        total += len(ids)
    return {
        "row": number,
        "task": task,
        "tokens": total,
        "loss_tokens": loss,
        "note": note,
        "segments": segments,
    }


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    runs, start = [], 0
    for index in range(1, len(mask) + 1):
        if index == len(mask) or mask[index] != mask[start]:
            runs.append((start, index))
            start = index
    return runs


def _sft_mask(
    tokenizer: Any, messages: list[dict[str, str]], assistant_only: bool
) -> tuple[list[int], list[int], str]:
    if not assistant_only:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return list(ids), [1] * len(ids), "every token counts (assistant_only_loss false)"
    template = tokenizer.chat_template
    try:  # the training template TRL patches in, as the TRL backend trains with
        from trl.chat_template_utils import get_training_chat_template

        template = get_training_chat_template(tokenizer) or template
    except (ImportError, ValueError):
        pass
    encoded = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        chat_template=template,
    )
    mask = list(encoded.get("assistant_masks") or [])
    if not any(mask):
        raise ValueError(
            "the model's chat template does not mark the assistant's tokens ({% generation %}), "
            "so the assistant-only loss cannot be shown"
        )
    return list(encoded["input_ids"]), mask, "only the assistant turns count (assistant_only_loss)"
