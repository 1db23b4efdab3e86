"""lm-evaluation-harness tasks with local data become prompt/answer rows, by lm-eval itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.lm_eval_fixture import write_tasks
from training_platform.evaluation import scoring
from training_platform.evaluation.lm_eval_tasks import TaskError, load_tasks


def test_generate_and_choice_tasks_become_rows_with_their_scorer(tmp_path: Path) -> None:
    tasks = str(write_tasks(tmp_path))
    add, pick = load_tasks(["tiny_add", "tiny_pick"], include_path=tasks, bundled=False, limit=None)
    assert (add.output_type, add.scorer, len(add.rows)) == ("generate_until", "numeric", 5)
    assert add.rows[3] == {"prompt": "What is 3 + 6?", "answer": "9", "lm_eval_task": "tiny_add"}
    assert (pick.output_type, pick.scorer, len(pick.rows)) == ("multiple_choice", "choice", 4)
    row = pick.rows[2]
    assert row["prompt"] == (
        "Which is 2?\nA. 3\nB. 2\nC. 4\nAnswer with the letter of the right option."
    )
    assert row["answer"] == "B"
    # The choice scorer reads the letter a model names.
    assert scoring.parse("choice").score("The answer is B.", row["answer"]) == 1.0
    (first,) = load_tasks(["tiny_add"], include_path=tasks, bundled=False, limit=2)
    assert len(first.rows) == 2


@pytest.mark.parametrize(
    ("task", "reason"),
    [("tiny_likely", "loglikelihood task"), ("no_such_task", "unknown lm-eval task")],
)
def test_a_task_without_a_generated_answer_or_unknown_is_refused(
    tmp_path: Path, task: str, reason: str
) -> None:
    with pytest.raises(TaskError, match=reason):
        load_tasks([task], include_path=str(write_tasks(tmp_path)), bundled=False, limit=None)
