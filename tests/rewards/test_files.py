"""The reward file check: it reads the source and never runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from training_platform.rewards.files import check_reward_file

GOOD = [
    "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
    "    return 1.0\n",
    "def compute_score(data_source, solution_str, ground_truth, extra_info):\n    return 0.0\n",
    "def compute_score(data_source, solution_str, ground_truth, **kwargs):\n    return 0.0\n",
    "def compute_score(*, ground_truth, solution_str, data_source, extra_info=None, scale=1):\n"
    "    return scale\n",
    "import re\n\ndef _helper(x):\n    return x\n\n"
    "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
    "    return float(bool(re.search(str(ground_truth), solution_str)))\n",
]


@pytest.mark.parametrize("source", GOOD)
def test_a_well_formed_reward_file_passes(source: str) -> None:
    check_reward_file(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "no compute_score function"),
        (
            "def score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1\n",
            "no compute_score function",
        ),
        # Nested definitions are not what an import binds.
        (
            "class R:\n    def compute_score(self, data_source, solution_str, ground_truth):\n"
            "        return 1\n",
            "no compute_score function",
        ),
        (
            "def compute_score(solution, truth):\n    return 1\n",
            "compute_score must take data_source, solution_str, ground_truth",
        ),
        (
            "def compute_score(data_source, solution_str, ground_truth, /, extra_info=None):\n"
            "    return 1\n",
            "compute_score must take data_source, solution_str, ground_truth",
        ),
        (
            "def compute_score(data_source, solution_str, ground_truth):\n    return 1\n",
            "compute_score must also accept extra_info",
        ),
        (
            "def compute_score(data_source, solution_str, ground_truth, extra_info, tokenizer):\n"
            "    return 1\n",
            "without a default that verl never passes: tokenizer",
        ),
        (
            "async def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
            "    return 1\n",
            "must be a plain def",
        ),
        ("def compute_score(data_source, solution_str:\n", "not valid Python: line 1"),
    ],
)
def test_a_bad_reward_file_is_refused_with_the_reason(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_reward_file(source)


def test_the_check_never_executes_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = (
        f"open({str(marker)!r}, 'w').write('x')\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return 1.0\n"
    )
    check_reward_file(source)
    assert not marker.exists()


def test_another_function_name_can_be_checked() -> None:
    source = "def judge(data_source, solution_str, ground_truth, extra_info=None):\n    return 1\n"
    check_reward_file(source, function="judge")
    with pytest.raises(ValueError, match="no compute_score function"):
        check_reward_file(source)
