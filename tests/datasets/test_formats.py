"""Dataset formats: detection by keys, conversion to each data task, and why a row is refused."""

from __future__ import annotations

import json

import pytest

from training_platform.datasets import formats


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": []}, "messages"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"prompt": "q", "answer": "4"}, "prompt_answer"),
        ({"prompt": "q", "response": "r"}, "prompt_response"),
        ({"prompt": [], "reward_model": {}, "data_source": "x"}, "rl"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"conversations": [], "system": "s"}, "sharegpt"),
        ({"text": "raw"}, None),
        ({"prompt": "q", "answer": "4", "response": "r"}, None),
    ],
)
def test_detect_format(row: dict, expected: str | None) -> None:  # type: ignore[type-arg]
    assert formats.detect_format(row) == expected


def test_every_format_feeds_its_task_and_chats_feed_rl_too() -> None:
    assert set(formats.TASK_OF_FORMAT) == set(formats.SOURCE_FORMATS)
    assert formats.formats_for_task("sft") == ["messages", "alpaca", "sharegpt", "prompt_response"]
    assert formats.formats_for_task("rl") == RL_FORMATS


RL_FORMATS = ["messages", "alpaca", "sharegpt", "prompt_answer", "rl"]


def test_detection_names_the_rule_and_an_ambiguous_row_its_candidates() -> None:
    found = formats.detect({"prompt": "q", "chosen": "a", "rejected": "b", "answer": "x"})
    # both fit and neither rule's keys contain the other's
    assert found.ambiguous
    assert found.candidates == ["preference", "prompt_answer"]
    found = formats.detect({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert (found.format, found.rule) == ("preference", "preference: has chosen, prompt, rejected")


def test_alpaca_becomes_a_chat_with_system_history_and_input() -> None:
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["Hi", "Hello!"]],
        "tenant": "acme",
    }
    assert formats.convert_row("alpaca", "sft", row, 1)["messages"] == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\nbonjour"},
        {"role": "assistant", "content": "hello"},
    ]
    rl = formats.convert_row("alpaca", "rl", row, 1)
    assert rl["reward_model"]["ground_truth"] == "hello"
    assert json.loads(rl["extra_info"]["labels"]) == {"tenant": "acme"}
    plain = formats.convert_row("alpaca", "sft", {"instruction": "Say hi", "output": "hi"}, 1)
    assert plain["messages"][0] == {"role": "user", "content": "Say hi"}


def test_sharegpt_speakers_map_to_roles() -> None:
    row = {
        "system": "Be kind.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "function_call", "value": "{}"},
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "It is 42."},
        ],
    }
    roles = [m["role"] for m in formats.convert_row("sharegpt", "sft", row, 1)["messages"]]
    assert roles == ["system", "user", "assistant", "assistant", "tool", "assistant"]
    with pytest.raises(formats.RowError, match=r"'conversations'\[0\].from must be one of"):
        formats.convert_row("sharegpt", "sft", {"conversations": [{"from": "x", "value": "y"}]}, 1)
    with pytest.raises(formats.RowError, match="no assistant turn"):
        formats.convert_row(
            "sharegpt", "sft", {"conversations": [{"from": "human", "value": "y"}]}, 1
        )


def test_a_multi_turn_preference_prompt_keeps_its_turns() -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    row = formats.convert_row(
        "preference",
        "preference",
        {"prompt": turns, "chosen": [{"role": "assistant", "content": "6"}], "rejected": "7"},
        1,
    )
    assert row == {"prompt": turns, "chosen": "6", "rejected": "7"}


def test_prompt_response_becomes_a_chat() -> None:
    row = formats.convert_row("prompt_response", "sft", {"prompt": "Hi", "response": "Hello"}, 1)
    assert row == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }


def test_prompt_answer_becomes_verls_rl_layout() -> None:
    row = formats.convert_row("prompt_answer", "rl", {"prompt": "What is 2 + 2?", "answer": 4}, 7)
    assert row == {
        "data_source": "training_platform",
        "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "4"},
        "extra_info": {"index": 7, "split": "train", "labels": "{}"},
    }


def test_an_rl_row_keeps_the_plain_fields_of_its_source_as_labels() -> None:
    source = {
        "prompt": "What is 2 + 2?",
        "answer": 4,
        "difficulty": "easy",
        "level": 2,
        "checked": True,
        "tags": ["not", "plain"],
        "note": "x" * 500,
    }
    row = formats.convert_row("prompt_answer", "rl", source, 0)
    labels = json.loads(row["extra_info"]["labels"])
    assert labels == {"difficulty": "easy", "level": 2, "checked": True, "note": "x" * 200}
    verl = {
        "data_source": "gsm8k",
        "prompt": [{"role": "user", "content": "q"}],
        "reward_model": {"ground_truth": "1"},
        "extra_info": {"index": 3, "split": "test", "tenant": "acme"},
        "difficulty": "hard",
    }
    labels = json.loads(formats.convert_row("rl", "rl", verl, 0)["extra_info"]["labels"])
    assert labels == {"tenant": "acme", "difficulty": "hard"}
    many = {"prompt": "q", "answer": 1, **{f"k{i}": i for i in range(40)}}
    labels = json.loads(formats.convert_row("prompt_answer", "rl", many, 0)["extra_info"]["labels"])
    assert len(labels) == formats.MAX_LABELS


def test_a_plain_preference_prompt_becomes_one_user_turn() -> None:
    row = formats.convert_row(
        "preference", "preference", {"prompt": "q", "chosen": "yes", "rejected": "no"}, 1
    )
    assert row == {"prompt": [{"role": "user", "content": "q"}], "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize(
    ("fmt", "task", "row", "message"),
    [
        ("messages", "sft", {"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        (
            "messages",
            "sft",
            {"messages": [{"role": "robot", "content": "q"}]},
            "role must be one of",
        ),
        ("messages", "sft", {"messages": "hello"}, "non-empty list of messages"),
        ("prompt_response", "sft", {"prompt": "q"}, "'response' must be a non-empty string"),
        ("prompt_response", "sft", {"prompt": "q", "response": "  "}, "'response' must be"),
        ("preference", "preference", {"prompt": "q", "chosen": "a"}, "'rejected' must be"),
        (
            "preference",
            "preference",
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            "are the same",
        ),
        ("prompt_answer", "rl", {"prompt": "q"}, "'answer' must be a string or a number"),
        ("prompt_answer", "rl", {"prompt": "q", "answer": True}, "'answer' must be"),
        ("rl", "rl", {"prompt": "q", "reward_model": {"style": "rule"}}, "ground_truth"),
        ("prompt_answer", "sft", {"prompt": "q", "answer": "1"}, "cannot feed the 'sft' task"),
        (
            "messages",
            "rl",
            {"messages": [{"role": "assistant", "content": "hi"}]},
            "needs turns before its last assistant turn",
        ),
        ("preference", "rl", {"prompt": "q", "chosen": "a", "rejected": "b"}, "cannot feed"),
    ],
)
def test_rows_that_do_not_fit_say_why(fmt: str, task: str, row: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(formats.RowError, match=message):
        formats.convert_row(fmt, task, row, 1)


def test_a_chat_feeds_rl_with_its_last_assistant_turn_as_the_reference() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6"},
        ],
        "difficulty": "easy",
    }
    row = formats.convert_row("messages", "rl", chat, 3)
    assert row["prompt"] == chat["messages"][:-1]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "6"}
    assert json.loads(row["extra_info"]["labels"]) == {"difficulty": "easy"}
    assert formats.formats_for_task("rl") == RL_FORMATS
