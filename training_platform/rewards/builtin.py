"""Built-in rule rewards in verl's shape: `fn(data_source, solution_str, ground_truth, extra_info)`.

verl loads this file by path (`reward.custom_reward_function.path`) and the TRL trainer imports
it the same way, so it stays standalone: standard library only, no platform imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

RewardFunction = Callable[..., float]

# A number: thousands groups ("1,234") or plain digits, an optional fraction, and a minus sign
# that is not the operator of "5-3". The one parser of the platform: evaluation scorers and
# the evaluate program import it from here (this file stays standalone).
_NUMBER = re.compile(r"(?:(?<![\d.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
# LaTeX's final-answer box, "\boxed{7}": where a text has one, its last one is the answer.
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# "12 + 7 = 19." -- the answer shape of the bundled arithmetic datasets.
_EQUATION = re.compile(r"-?\d+(?:\.\d+)?\s*[-+*/x]\s*-?\d+(?:\.\d+)?\s*=\s*-?\d+(?:\.\d+)?\.?")
_ENDS_WITH_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\.?$")


def last_number(text: str) -> Decimal | None:
    """The answer number of a text: the last number inside its last \\boxed{...} when it has
    one, else the last number written in it; None when it holds none.

    "1,234" is 1234, "-3.5" is -3.5, "5-3" ends with 3, "\\boxed{7} (not 8)" is 7.
    """
    boxed = _BOXED.findall(text)
    found = _NUMBER.findall(boxed[-1]) if boxed else []
    found = found or _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid numbers
        return None


def normalize_answer(text: str) -> str:
    """An answer as exact comparisons see it: spacing collapsed, one trailing period off,
    casefolded (the evaluate program and the evaluation scorers share it)."""
    return " ".join(text.split()).removesuffix(".").rstrip().casefold()


def _as_number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def math_answer(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None
) -> float:
    """1.0 when the last number in the response equals the ground truth, else 0.0."""
    got = last_number(solution_str)
    if got is None:
        return 0.0
    expected = last_number(str(ground_truth))
    return 1.0 if expected is not None and got == expected else 0.0


def exact_match(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None
) -> float:
    """1.0 when the response is the reference, as the evaluation's exact_match compares them
    (spacing collapsed, one trailing period off, casefolded), else 0.0. Any reference works
    (an answer, a chat dataset's last assistant turn), and no fixed output satisfies it."""
    return 1.0 if normalize_answer(solution_str) == normalize_answer(str(ground_truth)) else 0.0


def format(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """1.0 for exactly "a + b = c.", 0.5 for another response that ends with a number, else 0.

    A shape reward: it ignores the reference, so a fixed output in that shape earns it (a
    policy learns to print one). For the mechanics of RL on a tiny model, never alone."""
    text = solution_str.strip()
    if _EQUATION.fullmatch(text):
        return 1.0
    # Partial credit gives a policy that is not there yet a gradient towards the shape.
    if _ENDS_WITH_NUMBER.search(text):
        return 0.5
    return 0.0


BUILTIN_REWARDS: dict[str, RewardFunction] = {
    "math_answer": math_answer,
    "exact_match": exact_match,
    "format": format,
}
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
