"""Built-in rewards: verl's signature, the scores they give, and that the file stands alone."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest

from training_platform.assets.tiny import DATASETS_DIR
from training_platform.rewards import builtin
from training_platform.rewards.builtin import BUILTIN_REWARDS, compute_score, math_answer
from training_platform.rewards.files import check_reward_file

BUILTIN_FILE = Path(builtin.__file__)


@pytest.mark.parametrize(
    ("response", "truth", "expected"),
    [
        ("36 + 18 = 54.", "54", 1.0),
        ("The answer is 54", 54, 1.0),
        ("54.0", "54", 1.0),
        ("-3", "-3", 1.0),
        ("54 is not it, 55 is", "54", 0.0),  # the last number counts
        ("36 + 18 = 53.", "54", 0.0),
        ("no number here", "54", 0.0),
        ("", "54", 0.0),
        ("x = 7", "seven", 0.0),
    ],
)
def test_math_answer_compares_the_last_number(
    response: str, truth: object, expected: float
) -> None:
    assert math_answer("tiny-math", response, truth) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("36 + 18 = 54.", 1.0),
        ("  7 - 2 = 5  ", 1.0),
        ("36 + 18 = 53.", 1.0),  # the shape, not the truth
        ("so it is 54.", 0.5),
        ("54", 0.5),
        ("36 + 18 = 54. And more words", 0.0),
        ("harrowby", 0.0),
        ("", 0.0),
    ],
)
def test_format_scores_the_answer_shape(response: str, expected: float) -> None:
    assert BUILTIN_REWARDS["format"]("tiny-math", response, "54") == expected


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("4 + 18 = 22.", "4 + 18 = 22.", 1.0),
        ("  4 +  18 = 22 ", "4 + 18 = 22.", 1.0),  # spacing and one trailing period
        ("MILK", "milk", 1.0),
        ("4 + 18 = 23.", "4 + 18 = 22.", 0.0),
        ("22", "4 + 18 = 22.", 0.0),  # the number alone is math_answer's business
        ("door door", "door door door", 0.0),
        ("", "54", 0.0),
    ],
)
def test_exact_match_pays_only_for_the_reference(
    response: str, reference: str, expected: float
) -> None:
    assert BUILTIN_REWARDS["exact_match"]("d", response, reference) == expected


def test_no_fixed_output_earns_exact_match_on_the_quick_start_rl_data() -> None:
    # sft-grpo-evaluate trains GRPO on tiny-sft's prompts against their last assistant turn.
    lines = (DATASETS_DIR / "tiny-sft.jsonl").read_text().splitlines()
    references = [json.loads(line)["messages"][-1]["content"] for line in lines]
    best = max(
        sum(BUILTIN_REWARDS["exact_match"]("d", fixed, r) for r in references) / len(references)
        for fixed in set(references)
    )
    assert best <= 1 / 400  # every reference is different: a fixed output earns one row


def test_compute_score_uses_math_answer_unless_extra_info_names_another() -> None:
    assert compute_score("d", "1 + 1 = 3.", "2") == 0.0
    assert compute_score("d", "1 + 1 = 2.", "2", {"index": 0}) == 1.0
    assert compute_score("d", "1 + 1 = 3.", "2", {"reward": "format"}) == 1.0
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        compute_score("d", "2", "2", {"reward": "nope"})


@pytest.mark.parametrize("name", [*BUILTIN_REWARDS, "compute_score"])
def test_every_builtin_has_verls_signature_and_passes_the_file_check(name: str) -> None:
    function = getattr(builtin, name)
    parameters = list(inspect.signature(function).parameters)
    assert parameters == ["data_source", "solution_str", "ground_truth", "extra_info"]
    # Called the way verl calls it: every argument by keyword.
    value = function(data_source="d", solution_str="1 + 1 = 2.", ground_truth="2", extra_info={})
    assert isinstance(value, float)
    check_reward_file(BUILTIN_FILE.read_text(), function=name)


def test_the_builtin_file_imports_only_the_standard_library() -> None:
    tree = ast.parse(BUILTIN_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)


def test_the_builtin_file_loads_by_path_as_verl_loads_it() -> None:
    spec = importlib.util.spec_from_file_location("standalone_rewards", BUILTIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (
        module.compute_score(data_source="d", solution_str="2", ground_truth="2", extra_info=None)
        == 1.0
    )


def test_the_backends_offer_exactly_the_builtin_rewards() -> None:
    from training_platform.backends.trl.common import BUILTIN_REWARDS as OFFERED

    assert sorted(OFFERED) == sorted(BUILTIN_REWARDS)
