"""Statistics of evaluation results, with scipy: a score with its uncertainty, and whether two
models differ on the same samples.

- One result: the mean with its standard error and a 95% interval, Wilson's for pass/fail
  scores (right near 0 and 1, where the normal one leaves [0, 1]), Student's t otherwise.
- Two results on the same samples (paired): per sample improved, regressed or unchanged; the
  mean difference; for pass/fail scores McNemar's exact test (a binomial test on the samples
  that changed), otherwise a paired bootstrap of the mean difference (seeded, so the same
  rows always give the same answer) with its 95% interval and a two-sided p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SIGNIFICANCE = 0.05
# Two scores closer than this are the same (floating point noise of BLEU and ROUGE).
SAME = 1e-9


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    interval: str  # "wilson" | "t" | "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(scores: Sequence[float], *, binary: bool) -> Summary:
    """Mean, standard error and 95% interval of one set of scores."""
    n = len(scores)
    if n == 0:
        return Summary(0, None, None, None, None, "none")
    mean = math.fsum(scores) / n
    if n == 1:
        return Summary(1, mean, None, None, None, "none")
    variance = math.fsum((s - mean) ** 2 for s in scores) / (n - 1)
    stderr = math.sqrt(variance / n)
    from scipy import stats

    if binary:
        passed = round(math.fsum(scores))
        low, high = stats.binomtest(passed, n).proportion_ci(CONFIDENCE, method="wilson")
        return Summary(n, mean, stderr, float(low), float(high), "wilson")
    if stderr == 0.0:
        return Summary(n, mean, 0.0, mean, mean, "t")
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=stderr)
    return Summary(n, mean, stderr, float(low), float(high), "t")


@dataclass(frozen=True)
class Paired:
    n: int
    mean_a: float | None
    mean_b: float | None
    delta: float | None  # mean of b - a
    improved: int  # b scored higher than a
    regressed: int
    unchanged: int
    test: str  # "mcnemar" | "bootstrap" | "none"
    p_value: float | None
    ci_low: float | None  # of delta (bootstrap only)
    ci_high: float | None
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(a: float, b: float) -> str:
    """How sample b's score stands to a's: improved, regressed or unchanged."""
    if b > a + SAME:
        return "improved"
    if b < a - SAME:
        return "regressed"
    return "unchanged"


def compare(a: Sequence[float], b: Sequence[float], *, binary: bool) -> Paired:
    """b against a, sample by sample (the two sequences are aligned)."""
    if len(a) != len(b):
        raise ValueError("paired scores must be aligned")
    n = len(a)
    classes = [classify(x, y) for x, y in zip(a, b, strict=True)]
    improved, regressed = classes.count("improved"), classes.count("regressed")
    unchanged = n - improved - regressed
    if n == 0:
        return Paired(0, None, None, None, 0, 0, 0, "none", None, None, None, False)
    mean_a, mean_b = math.fsum(a) / n, math.fsum(b) / n
    delta = mean_b - mean_a
    from scipy import stats

    if binary:
        changed = improved + regressed
        p = 1.0 if changed == 0 else float(stats.binomtest(improved, changed, 0.5).pvalue)
        return Paired(
            n, mean_a, mean_b, delta, improved, regressed, unchanged, "mcnemar", p, None, None,
            p < SIGNIFICANCE,
        )  # fmt: skip
    import numpy as np

    differences = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if n < 2 or float(np.ptp(differences)) == 0.0:
        # No spread: the difference is what it is on every sample.
        same = abs(delta) <= SAME
        return Paired(
            n, mean_a, mean_b, delta, improved, regressed, unchanged, "bootstrap",
            1.0 if same else 0.0, delta, delta, not same,
        )  # fmt: skip
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    result = stats.bootstrap(
        (differences,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        random_state=rng,
    )
    means = result.bootstrap_distribution
    # Two-sided: how often the resampled mean lands on the other side of zero.
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0))))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Paired(
        n, mean_a, mean_b, delta, improved, regressed, unchanged, "bootstrap", p, low, high,
        not (low <= 0.0 <= high),
    )  # fmt: skip


def adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (scipy) of several tests made together; None
    (no test) stays None and does not count."""
    present = [p for p in p_values if p is not None]
    if not present:
        return list(p_values)
    from scipy import stats

    adjusted = iter(float(p) for p in stats.false_discovery_control(present, method="bh"))
    return [None if p is None else next(adjusted) for p in p_values]
