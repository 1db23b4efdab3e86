"""Dataset formats: what rows look like, how each is checked, and how it becomes a data task.

Source formats (what users upload, as JSONL, a JSON array or Parquet):
  messages         {"messages": [{"role": ..., "content": ...}, ...]}  with an assistant turn
  prompt_response  {"prompt": str, "response": str}
  preference       {"prompt": str | messages, "chosen": str, "rejected": str}
  prompt_answer    {"prompt": str | messages, "answer": str | number}
  rl               verl's RL layout: data_source, prompt (messages), reward_model.ground_truth

Data tasks (what backends read; see training_platform/backends/base.py): sft, preference, rl.
A format feeds its own task, and `messages` also feeds rl: the turns before the last assistant
turn are the prompt and that turn is the reference (an evaluation, or an RL reward's ground
truth).
An rl row keeps the source row's other plain fields (difficulty, tenant, ...) as labels:
`extra_info.labels`, a JSON object in a string, so that evaluations can break results down.
Pure functions: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Labels an rl row keeps: plain values only, this many at most, strings cut to this length.
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_TEXT = 200

SOURCE_FORMATS = ("messages", "prompt_response", "preference", "prompt_answer", "rl")
TASK_OF_FORMAT: dict[str, str] = {
    "messages": "sft",
    "prompt_response": "sft",
    "preference": "preference",
    "prompt_answer": "rl",
    "rl": "rl",
}
ROLES = ("system", "user", "assistant", "tool")
RL_DATA_SOURCE = "training_platform"


class RowError(ValueError):
    """A row does not fit its format; the message says what is missing or wrong."""


# Tasks a format feeds besides its own.
ALSO_FEEDS: dict[str, tuple[str, ...]] = {"messages": ("rl",)}


def can_feed(fmt: str, task: str) -> bool:
    """Whether rows of a source format can be prepared for a data task."""
    return TASK_OF_FORMAT.get(fmt) == task or task in ALSO_FEEDS.get(fmt, ())


def formats_for_task(task: str) -> list[str]:
    """Source formats that can be prepared for a data task."""
    return [fmt for fmt in TASK_OF_FORMAT if can_feed(fmt, task)]


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The format a row looks like, by its keys; None if it matches none."""
    keys = set(row)
    if "messages" in keys:
        return "messages"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if "reward_model" in keys and "prompt" in keys:
        return "rl"
    if {"prompt", "answer"} <= keys:
        return "prompt_answer"
    if {"prompt", "response"} <= keys:
        return "prompt_response"
    return None


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"'{key}' must be a non-empty string")
    return value


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"'{key}' must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise RowError(f"'{key}'[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"'{key}'[{index}].role must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"'{key}'[{index}].content must be a string")
        messages.append({"role": str(role), "content": content})
    return messages


def _prompt_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": _text(row, "prompt")}]
    messages = _messages(prompt, "prompt")
    if messages[-1]["role"] == "assistant":
        raise RowError("'prompt' must not end with an assistant message")
    return messages


def _answer(row: Mapping[str, Any], key: str = "answer") -> str:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"'{key}' must be a string or a number (the ground truth)")
    text = str(value).strip()
    if not text:
        raise RowError(f"'{key}' must not be empty")
    return text


def labels_of(row: Mapping[str, Any], skip: frozenset[str]) -> dict[str, str | int | float | bool]:
    """The plain fields of a row (strings, numbers, booleans) other than `skip`, as labels."""
    found: dict[str, str | int | float | bool] = {}
    for key, value in row.items():
        if len(found) == MAX_LABELS:
            break
        if key in skip or not isinstance(key, str) or len(key) > MAX_LABEL_KEY:
            continue
        if isinstance(value, str):
            found[key] = value[:MAX_LABEL_TEXT]
        elif isinstance(value, bool | int | float):
            found[key] = value
    return found


PROMPT_ANSWER_FIELDS = frozenset({"prompt", "answer", "messages"})
RL_FIELDS = frozenset({"data_source", "prompt", "ability", "reward_model", "extra_info"})
RL_EXTRA_INFO = frozenset({"index", "split", "labels"})


def _rl_extra_info(index: int, labels: Mapping[str, Any]) -> dict[str, Any]:
    return {"index": index, "split": "train", "labels": json.dumps(dict(labels))}


def _prompt_text(messages: list[dict[str, str]]) -> str:
    # DPO rows keep a plain prompt: the last user turn carries the question.
    return (
        messages[-1]["content"]
        if len(messages) == 1
        else "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    )


def convert_row(fmt: str, task: str, row: Mapping[str, Any], index: int) -> dict[str, Any]:
    """One source row as the data task's row; RowError says why it cannot be."""
    if not isinstance(row, Mapping):
        raise RowError("a row must be a JSON object")
    if not can_feed(fmt, task):
        raise RowError(f"format {fmt!r} cannot feed the {task!r} task")
    if fmt == "messages" and task == "rl":
        messages = _messages(row.get("messages"), "messages")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last < 1:
            raise RowError("'messages' needs turns before its last assistant turn (the reference)")
        prompt = messages[:last]
        return {
            "data_source": RL_DATA_SOURCE,
            "prompt": prompt,
            "ability": "general",
            "reward_model": {"style": "rule", "ground_truth": messages[last]["content"]},
            "extra_info": _rl_extra_info(index, labels_of(row, PROMPT_ANSWER_FIELDS)),
        }
    if fmt == "messages":
        messages = _messages(row.get("messages"), "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise RowError("'messages' has no assistant turn to learn from")
        return {"messages": messages}
    if fmt == "prompt_response":
        return {
            "messages": [
                {"role": "user", "content": _text(row, "prompt")},
                {"role": "assistant", "content": _text(row, "response")},
            ]
        }
    if fmt == "preference":
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        if chosen == rejected:
            raise RowError("'chosen' and 'rejected' are the same")
        return {
            "prompt": _prompt_text(_prompt_messages(row)),
            "chosen": chosen,
            "rejected": rejected,
        }
    if fmt == "prompt_answer":
        return {
            "data_source": RL_DATA_SOURCE,
            "prompt": _prompt_messages(row),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": _answer(row)},
            "extra_info": _rl_extra_info(index, labels_of(row, PROMPT_ANSWER_FIELDS)),
        }
    # fmt == "rl": already verl's layout; check what verl and the reward function read.
    reward = row.get("reward_model")
    if not isinstance(reward, Mapping) or "ground_truth" not in reward:
        raise RowError("'reward_model' must be an object with a ground_truth")
    source = row.get("data_source")
    return {
        "data_source": str(source) if isinstance(source, str) and source else RL_DATA_SOURCE,
        "prompt": _prompt_messages(row),
        "ability": str(row.get("ability") or "general"),
        "reward_model": {
            "style": str(reward.get("style") or "rule"),
            "ground_truth": _answer(reward, "ground_truth"),
        },
        "extra_info": _rl_extra_info(index, _rl_labels(row)),
    }


def _rl_labels(row: Mapping[str, Any]) -> dict[str, Any]:
    extra = row.get("extra_info")
    found = labels_of(extra, RL_EXTRA_INFO) if isinstance(extra, Mapping) else {}
    for key, value in labels_of(row, RL_FIELDS).items():
        if len(found) < MAX_LABELS:
            found.setdefault(key, value)
    return found
