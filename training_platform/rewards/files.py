"""Checks of user reward files, done by reading the source: a user file is never executed here."""

from __future__ import annotations

import ast

REWARD_FUNCTION = "compute_score"
REQUIRED_PARAMETERS = ("data_source", "solution_str", "ground_truth")
# verl passes it by keyword on every call, so a function without it fails at the first reward.
EXTRA_PARAMETER = "extra_info"


def check_reward_file(source_text: str, *, function: str = REWARD_FUNCTION) -> None:
    """Raise ValueError unless the source defines `function` with verl's reward signature."""
    try:
        tree = ast.parse(source_text)
    except SyntaxError as error:
        raise ValueError(
            f"the reward file is not valid Python: line {error.lineno}: {error.msg}"
        ) from None
    found = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function
    ]
    if not found:
        raise ValueError(f"no {function} function at the top level of the reward file")
    node = found[-1]  # the last definition is the one an import binds
    if isinstance(node, ast.AsyncFunctionDef):
        raise ValueError(f"{function} must be a plain def, not async def")
    _check_signature(node.args, function)


def _check_signature(args: ast.arguments, function: str) -> None:
    # verl calls with keywords only, so positional-only parameters cannot receive them.
    by_keyword = [a.arg for a in args.args + args.kwonlyargs]
    wanted = ", ".join(REQUIRED_PARAMETERS)
    if any(name not in by_keyword for name in REQUIRED_PARAMETERS):
        raise ValueError(
            f"{function} must take data_source, solution_str, ground_truth "
            f"(and optionally extra_info): def {function}({wanted}, extra_info=None)"
        )
    if EXTRA_PARAMETER not in by_keyword and args.kwarg is None:
        raise ValueError(
            f"{function} must also accept extra_info, which verl always passes: "
            f"def {function}({wanted}, extra_info=None)"
        )
    accepted = {*REQUIRED_PARAMETERS, EXTRA_PARAMETER}
    positional_defaults = len(args.defaults)
    positional = args.posonlyargs + args.args
    required_positional = positional[: len(positional) - positional_defaults]
    required_keyword = [
        a for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None
    ]
    extra = [a.arg for a in required_positional + required_keyword if a.arg not in accepted]
    if extra:
        raise ValueError(
            f"{function} has parameter(s) without a default that verl never passes: "
            f"{', '.join(extra)}"
        )
