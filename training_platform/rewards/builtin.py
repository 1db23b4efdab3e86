"""Built-in rule rewards in verl's shape: `fn(data_source, solution_str, ground_truth, extra_info)`.

verl loads this file by path (`reward.custom_reward_function.path`) and the TRL trainer imports
it the same way, so it stays standalone: standard library only, no platform imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

RewardFunction = Callable[..., float]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# "12 + 7 = 19." -- the answer shape of the bundled arithmetic datasets.
_EQUATION = re.compile(r"-?\d+(?:\.\d+)?\s*[-+*/x]\s*-?\d+(?:\.\d+)?\s*=\s*-?\d+(?:\.\d+)?\.?")
_ENDS_WITH_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\.?$")


def _as_number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def math_answer(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None
) -> float:
    """1.0 when the last number in the response equals the ground truth, else 0.0."""
    numbers = _NUMBER.findall(solution_str)
    if not numbers:
        return 0.0
    expected = _as_number(str(ground_truth))
    got = _as_number(numbers[-1])
    if expected is None or got is None:
        return 1.0 if numbers[-1] == str(ground_truth).strip() else 0.0
    return 1.0 if abs(got - expected) < 1e-9 else 0.0


def format(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """1.0 for exactly "a + b = c.", 0.5 for another response that ends with a number, else 0."""
    text = solution_str.strip()
    if _EQUATION.fullmatch(text):
        return 1.0
    # Partial credit gives a policy that is not there yet a gradient towards the shape.
    if _ENDS_WITH_NUMBER.search(text):
        return 0.5
    return 0.0


BUILTIN_REWARDS: dict[str, RewardFunction] = {"math_answer": math_answer, "format": format}
DEFAULT_REWARD = "math_answer"


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None
) -> float:
    """verl's default entry point: the reward named by extra_info["reward"], else math_answer."""
    name = extra_info.get("reward") if isinstance(extra_info, dict) else None
    reward = BUILTIN_REWARDS.get(name if isinstance(name, str) else DEFAULT_REWARD)
    if reward is None:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {', '.join(BUILTIN_REWARDS)}")
    return reward(data_source, solution_str, ground_truth, extra_info)
