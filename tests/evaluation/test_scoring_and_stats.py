"""Scorers and statistics of evaluation results, checked against known answers."""

from __future__ import annotations

import pytest

from training_platform.core.errors import InvalidInput
from training_platform.evaluation import scoring, stats


@pytest.mark.parametrize(
    ("spec", "output", "reference", "score"),
    [
        ("exact", "  Paris. ", "paris", 1.0),
        ("exact", "Paris, France", "paris", 0.0),
        ("numeric", "so 12 + 7 = 19.", "19", 1.0),
        ("numeric", "It costs 1,234 coins", "1234", 1.0),
        ("numeric", "\\boxed{7} (not 8)", "7", 1.0),
        ("numeric", "no number", "7", 0.0),
        ("contains", "The capital is PARIS indeed", "paris", 1.0),
        ("contains", "London", "paris", 0.0),
        ("choice", "I pick (B) because", "B", 1.0),
        ("choice", "A", "B", 0.0),
        ("regex:answer: (\\w+)", "reasoning... answer: Yes", "yes", 1.0),
        ("regex:answer: (\\w+)", "no answer here", "yes", 0.0),
        ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("rouge_l", "the cat sat", "the cat sat", 1.0),
    ],
)
def test_each_scorer_on_known_pairs(spec: str, output: str, reference: str, score: float) -> None:
    assert scoring.parse(spec).score(output, reference) == pytest.approx(score)


def test_graded_scorers_give_partial_credit_and_are_not_binary() -> None:
    rouge = scoring.parse("rouge_l")
    assert not rouge.binary and scoring.parse("exact").binary
    assert 0.0 < rouge.score("the cat sat on the mat", "the cat sat") < 1.0
    assert 0.0 < scoring.parse("bleu").score("the cat sat on a mat", "the cat sat on the mat") < 1


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("nope", "unknown scorer"),
        ("regex:", "needs a pattern"),
        ("regex:(", "does not compile"),
        ("pass@0:numeric", "needs K in 1-64"),
        ("pass@2", "needs K in 1-64"),
        ("pass@2:bleu", "not a pass/fail scorer"),
        ("pass@2:pass@1:exact", "not a pass/fail scorer"),
        ("pass@2:nope", "unknown scorer"),
        ("pass@2:file:mine", "not a pass/fail scorer"),
        ("reward:nope", "unknown builtin reward"),
        ("file:", "needs the name of an uploaded reward file"),
        ("file:../etc/passwd", "needs the name of an uploaded reward file"),
        ("judge:only-endpoint", "needs an endpoint and a rubric"),
    ],
)
def test_a_bad_scorer_is_refused_with_the_field(spec: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as raised:
        scoring.parse(spec)
    assert raised.value.loc == ("body", "scorer")


def test_a_pass_fail_summary_has_a_wilson_interval_inside_0_1() -> None:
    summary = stats.summarize([1.0] * 9 + [0.0], binary=True)
    assert summary.mean == pytest.approx(0.9)
    assert summary.interval == "wilson"
    # Wilson's 95% interval for 9 of 10 (a textbook value).
    assert summary.ci_low == pytest.approx(0.5958, abs=1e-3)
    assert summary.ci_high == pytest.approx(0.9821, abs=1e-3)
    assert summary.stderr == pytest.approx((0.9 * 0.1 / 9) ** 0.5 * (10 / 10) ** 0.5, rel=0.06)


def test_a_graded_summary_has_a_t_interval() -> None:
    summary = stats.summarize([0.2, 0.4, 0.6, 0.8], binary=False)
    assert summary.mean == pytest.approx(0.5)
    assert summary.interval == "t"
    # mean +- t(0.975, 3) * s / sqrt(n): s = 0.2582, t = 3.1824
    assert summary.ci_high - 0.5 == pytest.approx(3.1824 * 0.2582 / 2, rel=1e-3)


def test_empty_and_single_results_have_no_interval() -> None:
    assert stats.summarize([], binary=True).mean is None
    assert stats.summarize([1.0], binary=True).ci_low is None


def test_mcnemar_counts_and_exact_p_value() -> None:
    a = [1.0] * 10 + [0.0] * 10 + [1.0] * 0 + [0.0] * 10
    b = [1.0] * 10 + [1.0] * 10 + [0.0] * 0 + [0.0] * 10
    paired = stats.compare(a, b, binary=True)
    assert (paired.improved, paired.regressed, paired.unchanged) == (10, 0, 20)
    assert paired.test == "mcnemar"
    assert paired.p_value == pytest.approx(2 * 0.5**10)  # exact two-sided binomial
    assert paired.significant and paired.delta == pytest.approx(10 / 30)


def test_few_changes_are_not_significant() -> None:
    paired = stats.compare([1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], binary=True)
    assert (paired.improved, paired.regressed, paired.unchanged) == (1, 1, 2)
    assert paired.p_value == 1.0 and not paired.significant


def test_paired_bootstrap_is_seeded_and_finds_a_clear_gain() -> None:
    a = [0.1 * (i % 5) for i in range(40)]
    b = [x + 0.3 + 0.01 * (i % 3) for i, x in enumerate(a)]
    first = stats.compare(a, b, binary=False)
    assert first == stats.compare(a, b, binary=False)
    assert first.test == "bootstrap" and first.significant
    assert first.ci_low is not None and first.ci_low > 0.25
    assert first.improved == 40 and first.p_value == 0.0


def test_paired_bootstrap_sees_noise_as_noise() -> None:
    a = [0.5 + 0.1 * ((i * 7) % 5 - 2) for i in range(40)]
    b = [0.5 + 0.1 * ((i * 3) % 5 - 2) for i in range(40)]
    paired = stats.compare(a, b, binary=False)
    assert not paired.significant and paired.p_value is not None and paired.p_value > 0.05


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), ("c", "C"), ("I pick (B) because", "B"), ("D) is right", "D"),
     ("The answer is C", "C"), ("I think A", "A"), ("I am unsure", None)],
)  # fmt: skip
def test_the_option_an_output_names(text: str, letter: str | None) -> None:
    assert scoring.option(text) == letter


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    scorer = scoring.parse("pass@02:numeric")
    assert scorer.spec == "pass@2:numeric" and scorer.k == 2 and not scorer.binary
    outputs = ["1", "2", "7", "x"]  # 1 of 4 right
    # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    assert scorer.judge(outputs, "7") == pytest.approx(0.5)
    assert scoring.parse("pass@1:numeric").judge(outputs, "7") == pytest.approx(0.25)
    assert scoring.parse("pass@4:numeric").judge(outputs, "7") == 1.0
    assert scoring.parse("pass@3:numeric").judge(outputs, "9") == 0.0
    # By brute force: the share of the k-subsets with at least one pass.
    from itertools import combinations

    passes = [True, False, True, False, False, False]
    for k in range(1, 7):
        subsets = list(combinations(passes, k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert scoring.pass_at_k(6, 2, k) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs 2 completions"):
        scorer.judge(["7"], "7")
    # Every other scorer judges the first completion.
    assert scoring.parse("numeric").judge(["x", "7"], "7") == 0.0


def test_worker_scorers_are_deferred_and_builtin_rewards_score_here() -> None:
    judge = scoring.parse("judge:gpt-mini:helpful")
    assert (judge.deferred, judge.target, judge.rubric) == ("judge", "gpt-mini", "helpful")
    assert scoring.parse("file:mine").deferred == "file"
    reward = scoring.parse("reward:math_answer")
    assert reward.deferred is None and not reward.binary
    assert reward.score("so it is 12", "12") == 1.0 and reward.score("13", "12") == 0.0


def test_a_judge_is_asked_the_rubric_and_its_last_number_is_the_score() -> None:
    from training_platform.evaluation.deferred import Item, judge_prompt, verdict

    item = Item(prompt="2+2?", reference="4", output="{reference} is 5", labels={})
    rubric = "Q: {prompt}\nA: {output}\nRight answer: {reference}\nScore 0-10."
    # One pass: the output's own "{reference}" is text, not a placeholder.
    assert judge_prompt(rubric, item) == (
        "Q: 2+2?\nA: {reference} is 5\nRight answer: 4\nScore 0-10."
    )
    assert verdict("Reasoning... Score: 7", 10) == pytest.approx(0.7)
    assert verdict("**8/10**", 10) == pytest.approx(0.8)  # a final fraction is one
    assert verdict("Score: 4 / 5.", 100) == pytest.approx(0.8)
    assert verdict("12", 10) == 1.0 and verdict("-3", 10) == 0.0
    assert verdict("no idea", 10) == 0.0
