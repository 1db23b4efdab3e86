"""Scorers: how one generated output is judged against its reference, as a number (in [0, 1]
but for reward functions, which give what they give).

A scorer is named by a spec string, stored with every score it gave, so that one evaluation's
generations can be scored by several scorers without generating again:

    exact          1 when output and reference are equal, case, spacing and one final period aside
    numeric        1 when the answer numbers are equal (the platform's one number parser,
                   training_platform.rewards.builtin.last_number: "1,234", "-3.5", "\\boxed{7}")
    contains       1 when the output contains the reference (case and spacing aside)
    choice         multiple choice: 1 when the option letter the output names ("(B)", "B)",
                   "answer is B", a lone "B") is the reference's
    regex:PATTERN  the first match of PATTERN in the output (its first group when it has one)
                   compared with the reference as `exact` does
    bleu           sentence BLEU (sacrebleu), scaled to [0, 1]
    rouge_l        ROUGE-L F-measure (rouge-score)
    pass@K:SCORER  of the n completions sampled per prompt (n >= K), the chance that at least
                   one of K drawn without replacement passes the pass/fail SCORER: the unbiased
                   estimator 1 - C(n-c, K) / C(n, K), c of the n passing (Chen et al., 2021);
                   pass@1 is the mean pass rate over the n

    reward:NAME    a builtin reward function (math_answer, exact_match, format): the value it gives
    file:NAME      an uploaded reward file (tp rewards upload): its compute_score, called as
                   verl calls it (data_source "evaluation", the output as solution_str, the
                   reference as ground_truth, extra_info {"prompt", "labels"}). It is user code:
                   it runs on a worker, in a process of its own, never in the API
    judge:ENDPOINT:RUBRIC
                   an LLM judge: the endpoint is asked the stored rubric about each sample and
                   the last number of its reply over the rubric's max_score (clipped to [0, 1])
                   is the score, 0 when it names none; its reply is kept with the score

Every other scorer judges the first completion of a prompt. file: and judge: scorers are
`deferred`: a rescore with one is queued for a worker (training_platform.evaluation.tasks).

Pass/fail scorers give only 0 or 1 (`binary`): their results compare with McNemar's test, the
others with a paired bootstrap (training_platform.evaluation.stats).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from training_platform.core.errors import InvalidInput
from training_platform.rewards.builtin import last_number, normalize_answer

MAX_PATTERN = 200
# Where an output names its option, in order of trust: "(B)", "B)" / "B." / "B:", "answer is B",
# then any lone capital letter but "I" (a word, not an option).
_CHOICES = (
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"\b([A-Z])[).:](?!\w)"),
    re.compile(r"(?i:answer)\s*(?:is|:)?\s*([A-Z])\b"),
    re.compile(r"\b([A-HJ-Z])\b"),
)


def _exact(output: str, reference: str) -> float:
    return float(normalize_answer(output) == normalize_answer(reference))


def _numeric(output: str, reference: str) -> float:
    expected = last_number(reference)
    return float(expected is not None and last_number(output) == expected)


def _contains(output: str, reference: str) -> float:
    wanted = normalize_answer(reference)
    return float(bool(wanted) and wanted in normalize_answer(output))


def option(text: str) -> str | None:
    """The option letter a text names, or None."""
    stripped = text.strip()
    if len(stripped) == 1 and stripped.isalpha():
        return stripped.upper()
    for pattern in _CHOICES:
        found = pattern.search(text)
        if found is not None:
            return found.group(1)
    return None


def _choice(output: str, reference: str) -> float:
    expected = option(reference)
    return float(expected is not None and option(output) == expected)


def _bleu(output: str, reference: str) -> float:
    import sacrebleu

    return min(1.0, max(0.0, sacrebleu.sentence_bleu(output, [reference]).score / 100.0))


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l(output: str, reference: str) -> float:
    return float(_rouge().score(reference, output)["rougeL"].fmeasure)


_FIXED: dict[str, tuple[Callable[[str, str], float], bool, str]] = {
    "exact": (_exact, True, "equal, case, spacing and one final period aside"),
    "numeric": (_numeric, True, "the answer numbers are equal"),
    "contains": (_contains, True, "the output contains the reference"),
    "choice": (_choice, True, "the same option letter"),
    "bleu": (_bleu, False, "sentence BLEU / 100 (sacrebleu)"),
    "rouge_l": (_rouge_l, False, "ROUGE-L F-measure (rouge-score)"),
}
SCORERS = (
    *_FIXED, "regex:PATTERN", "pass@K:SCORER", "reward:NAME", "file:NAME", "judge:ENDPOINT:RUBRIC"
)  # fmt: skip
MAX_K = 64


def pass_at_k(n: int, passed: int, k: int) -> float:
    """The chance that at least one of k of n completions (`passed` of them passing), drawn
    without replacement, passes."""
    if n - passed < k:
        return 1.0
    return 1.0 - math.comb(n - passed, k) / math.comb(n, k)


@dataclass(frozen=True)
class Scorer:
    """A checked scorer spec and its function."""

    spec: str
    binary: bool
    score: Callable[[str, str], float]
    k: int | None = None  # pass@k: judged on all of a prompt's completions
    # Run on a worker: "file" (an uploaded reward file), "judge" (an endpoint); None: here.
    deferred: str | None = None
    target: str = ""  # the reward file's name, or the judge's endpoint
    rubric: str = ""  # the judge's rubric

    def judge(self, outputs: Sequence[str], reference: str) -> float:
        """The score of one prompt's completions (the first one, but for pass@k)."""
        if self.k is None:
            return self.score(outputs[0], reference)
        if len(outputs) < self.k:
            raise ValueError(f"{self.spec} needs {self.k} completions per prompt")
        passed = sum(self.score(output, reference) >= 1.0 for output in outputs)
        return pass_at_k(len(outputs), passed, self.k)


def _unscored(output: str, reference: str) -> float:
    raise RuntimeError("a deferred scorer runs on a worker")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def parse(spec: str, field: tuple[str | int, ...] = ("body", "scorer")) -> Scorer:
    """The scorer a spec names; InvalidInput naming `field` when it names none. Whether the
    file, endpoint or rubric it names exists is the service's to check."""
    if spec.startswith("reward:"):
        from training_platform.rewards.builtin import BUILTIN_REWARDS

        name = spec.removeprefix("reward:")
        function = BUILTIN_REWARDS.get(name)
        if function is None:
            raise InvalidInput(
                field, f"unknown builtin reward {name!r}; one of: {', '.join(BUILTIN_REWARDS)}"
            )

        chosen = function

        def reward(output: str, reference: str) -> float:
            return float(chosen("evaluation", output, reference, None))

        return Scorer(spec, False, reward)
    if spec.startswith("file:"):
        name = spec.removeprefix("file:")
        if not NAME.fullmatch(name):
            raise InvalidInput(field, "file:NAME needs the name of an uploaded reward file")
        return Scorer(spec, False, _unscored, deferred="file", target=name)
    if spec.startswith("judge:"):
        endpoint, _, rubric = spec.removeprefix("judge:").partition(":")
        if not NAME.fullmatch(endpoint) or not NAME.fullmatch(rubric):
            raise InvalidInput(field, "judge:ENDPOINT:RUBRIC needs an endpoint and a rubric name")
        return Scorer(spec, False, _unscored, deferred="judge", target=endpoint, rubric=rubric)
    if spec.startswith("pass@"):
        head, _, inner = spec.removeprefix("pass@").partition(":")
        if not head.isdigit() or not 1 <= int(head) <= MAX_K or not inner:
            raise InvalidInput(
                field, f"pass@K:SCORER needs K in 1-{MAX_K} and a scorer, as in pass@4:numeric"
            )
        base = parse(inner, field)
        if not base.binary or base.k is not None or base.deferred:
            raise InvalidInput(field, f"pass@K counts passes: {inner} is not a pass/fail scorer")
        return Scorer(f"pass@{int(head)}:{base.spec}", False, base.score, int(head))
    if spec in _FIXED:
        function, binary, _ = _FIXED[spec]
        return Scorer(spec, binary, function)
    if spec.startswith("regex:"):
        pattern = spec.removeprefix("regex:")
        if not pattern or len(pattern) > MAX_PATTERN:
            raise InvalidInput(field, f"a regex scorer needs a pattern of 1-{MAX_PATTERN} chars")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise InvalidInput(field, f"the regex does not compile: {error}") from error

        def extract(output: str, reference: str) -> float:
            found = compiled.search(output)
            if found is None:
                return 0.0
            value = found.group(1) if compiled.groups else found.group(0)
            return _exact(value or "", reference)

        return Scorer(spec, True, extract)
    raise InvalidInput(field, f"unknown scorer {spec!r}; one of: {', '.join(SCORERS)}")


def describe() -> dict[str, str]:
    """Each scorer's spec and what it measures (for the API and the CLI)."""
    found = {name: text for name, (_, _, text) in _FIXED.items()}
    found["regex:PATTERN"] = "the first match (its first group) equals the reference"
    found["pass@K:SCORER"] = (
        "of n >= K sampled completions, the chance that one of K passes SCORER (unbiased)"
    )
    found["reward:NAME"] = "a builtin reward function's value (math_answer, exact_match, format)"
    found["file:NAME"] = "an uploaded reward file's compute_score (run on a worker)"
    found["judge:ENDPOINT:RUBRIC"] = "an LLM judge's score by a stored rubric (run on a worker)"
    return found
