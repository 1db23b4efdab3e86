"""Dataset formats: what rows look like, how each is told apart and checked, and how it becomes
a data task.

Source formats (what users upload, as JSONL, a JSON array or Parquet):
  messages         OpenAI chat: {"messages": [{"role", "content"}, ...]} with an assistant turn
  alpaca           {"instruction", "input"?, "output", "system"?, "history"?: [[query, response]]}
  sharegpt         {"conversations": [{"from": "human" | "gpt" | ..., "value"}], "system"?}
  prompt_response  {"prompt": str, "response": str}
  preference       {"prompt": str | messages, "chosen", "rejected"}: prompt turns are kept
  prompt_answer    {"prompt": str | messages, "answer": str | number}
  rl               verl's RL layout: data_source, prompt (messages), reward_model.ground_truth

Each format is recognised by the keys its rows must have (RULES); a row that fits two rules,
neither more specific than the other, is ambiguous and the user names the format.

Data tasks (what backends read; see training_platform/backends/base.py): sft, preference, rl.
A format feeds its own task, and the conversation formats (messages, alpaca, sharegpt) also feed
rl: the turns before the last assistant turn are the prompt and that turn is the reference (an
evaluation, or an RL reward's ground truth).
A preference row's prompt is a list of messages (a plain prompt is one user turn), so that DPO
sees the turns of a multi-turn prompt as turns.
An rl row keeps the source row's other plain fields (difficulty, tenant, ...) as labels:
`extra_info.labels`, a JSON object in a string, so that evaluations can break results down.
Pure functions: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Labels an rl row keeps: plain values only, this many at most, strings cut to this length.
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_TEXT = 200

SOURCE_FORMATS = (
    "messages",
    "alpaca",
    "sharegpt",
    "prompt_response",
    "preference",
    "prompt_answer",
    "rl",
)
TASK_OF_FORMAT: dict[str, str] = {
    "messages": "sft",
    "alpaca": "sft",
    "sharegpt": "sft",
    "prompt_response": "sft",
    "preference": "preference",
    "prompt_answer": "rl",
    "rl": "rl",
}
CONVERSATION_FORMATS = ("messages", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant", "tool")
RL_DATA_SOURCE = "training_platform"

# The keys a row of each format must have, in the order formats are listed.
RULES: dict[str, frozenset[str]] = {
    "messages": frozenset({"messages"}),
    "alpaca": frozenset({"instruction", "output"}),
    "sharegpt": frozenset({"conversations"}),
    "prompt_response": frozenset({"prompt", "response"}),
    "preference": frozenset({"prompt", "chosen", "rejected"}),
    "prompt_answer": frozenset({"prompt", "answer"}),
    "rl": frozenset({"prompt", "reward_model"}),
}

# ShareGPT speakers (LLaMA-Factory's tags and the common variants) as chat roles.
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


class RowError(ValueError):
    """A row does not fit its format; the message says what is missing or wrong."""


# Tasks a format feeds besides its own.
ALSO_FEEDS: dict[str, tuple[str, ...]] = {fmt: ("rl",) for fmt in CONVERSATION_FORMATS}


def can_feed(fmt: str, task: str) -> bool:
    """Whether rows of a source format can be prepared for a data task."""
    return TASK_OF_FORMAT.get(fmt) == task or task in ALSO_FEEDS.get(fmt, ())


def formats_for_task(task: str) -> list[str]:
    """Source formats that can be prepared for a data task."""
    return [fmt for fmt in TASK_OF_FORMAT if can_feed(fmt, task)]


@dataclass(frozen=True)
class Detection:
    """Which format a row fits and why: the rule that fired, or every candidate when several do."""

    format: str | None
    rule: str = ""
    candidates: list[str] = field(default_factory=list)

    @property
    def ambiguous(self) -> bool:
        """More than one format fits and none is more specific."""
        return self.format is None and len(self.candidates) > 1


def describe_rule(fmt: str) -> str:
    """The rule of a format in words."""
    return f"{fmt}: has {', '.join(sorted(RULES[fmt]))}"


def detect(row: Mapping[str, Any]) -> Detection:
    """The format a row fits by its keys; a rule whose keys contain another's is more specific."""
    keys = set(row)
    fits = [fmt for fmt, needed in RULES.items() if needed <= keys]
    fits = [f for f in fits if not any(RULES[f] < RULES[other] for other in fits)]
    if len(fits) == 1:
        return Detection(fits[0], describe_rule(fits[0]), fits)
    return Detection(None, "", fits)


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The format a row fits, None if it fits none or several."""
    return detect(row).format


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


def _completion(row: Mapping[str, Any], key: str) -> str:
    """A preference completion: text, or a list holding one assistant message."""
    value = row.get(key)
    if isinstance(value, list):
        messages = _messages(value, key)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise RowError(f"'{key}' as a list must hold one assistant message")
        value = messages[0]["content"]
        if not value.strip():
            raise RowError(f"'{key}' must not be empty")
        return str(value)
    return _text(row, key)


def _optional_text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be a string")
    return value


def _alpaca_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = []
    system = _optional_text(row, "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("'history' must be a list of [query, response] pairs")
    for index, pair in enumerate(history):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
        ):
            raise RowError(f"'history'[{index}] must be a [query, response] pair of strings")
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    instruction, extra = _text(row, "instruction"), _optional_text(row, "input")
    query = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [
        {"role": "user", "content": query},
        {"role": "assistant", "content": _text(row, "output")},
    ]
    return messages


def _sharegpt_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list of turns")
    messages = []
    system = _optional_text(row, "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RowError(f"'conversations'[{index}] must be an object with from and value")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(
                f"'conversations'[{index}].from must be one of {', '.join(SHAREGPT_ROLES)}"
            )
        if not isinstance(text, str):
            raise RowError(f"'conversations'[{index}].value must be a string")
        messages.append({"role": role, "content": text})
    return messages


def conversation(fmt: str, row: Mapping[str, Any]) -> list[dict[str, str]]:
    """A conversation-format row as chat messages, with an assistant turn to learn from."""
    if fmt == "alpaca":
        messages = _alpaca_messages(row)
    elif fmt == "sharegpt":
        messages = _sharegpt_messages(row)
    else:
        messages = _messages(row.get("messages"), "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"'{_CONVERSATION_KEY[fmt]}' has no assistant turn to learn from")
    return messages


_CONVERSATION_KEY = {"messages": "messages", "alpaca": "output", "sharegpt": "conversations"}
# The fields a conversation format reads; the rest are labels.
_CONVERSATION_FIELDS = {
    "messages": frozenset({"messages"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "sharegpt": frozenset({"conversations", "system"}),
}


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


def prompt_text(messages: list[dict[str, str]]) -> str:
    """A prompt's turns as one text, for a model without a chat template."""
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
    if fmt in CONVERSATION_FORMATS and task == "rl":
        messages = conversation(fmt, row)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last < 1:
            raise RowError(
                f"'{_CONVERSATION_KEY[fmt]}' needs turns before its last assistant turn "
                "(the reference)"
            )
        return {
            "data_source": RL_DATA_SOURCE,
            "prompt": messages[:last],
            "ability": "general",
            "reward_model": {"style": "rule", "ground_truth": messages[last]["content"]},
            "extra_info": _rl_extra_info(index, labels_of(row, _CONVERSATION_FIELDS[fmt])),
        }
    if fmt in CONVERSATION_FORMATS:
        return {"messages": conversation(fmt, row)}
    if fmt == "prompt_response":
        return {
            "messages": [
                {"role": "user", "content": _text(row, "prompt")},
                {"role": "assistant", "content": _text(row, "response")},
            ]
        }
    if fmt == "preference":
        chosen, rejected = _completion(row, "chosen"), _completion(row, "rejected")
        if chosen == rejected:
            raise RowError("'chosen' and 'rejected' are the same")
        return {"prompt": _prompt_messages(row), "chosen": chosen, "rejected": rejected}
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
