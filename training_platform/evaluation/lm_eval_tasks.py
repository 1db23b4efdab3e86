"""Evaluation suites from lm-evaluation-harness tasks: their prompts and references as
prompt/answer rows, read on the user's machine (`tp eval suites import-lm-eval`) from data that
is there already: nothing is downloaded (HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set).

A task's documents (its test split, else validation) become rows with lm-eval's own
templates: the prompt is the task's description and doc_to_text, the answer its doc_to_target.
A generate_until task is scored `numeric` when every answer is a number ("1,234" too), `exact`
otherwise. A
multiple_choice task lists its choices as lettered options after the question and asks for the
letter, which the `choice` scorer reads. loglikelihood tasks compare the model's probabilities
of fixed continuations and have no generated answer: they are refused, by name.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GENERATE, CHOICE = "generate_until", "multiple_choice"
LETTERS = string.ascii_uppercase


class TaskError(ValueError):
    """A task cannot become a suite item; the message says which and why."""


@dataclass(frozen=True)
class TaskRows:
    task: str
    output_type: str
    scorer: str
    rows: list[dict[str, Any]]  # {"prompt", "answer", "lm_eval_task", "doc"}


def _offline() -> None:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def load_tasks(
    names: Sequence[str], *, include_path: str | None, bundled: bool, limit: int | None
) -> list[TaskRows]:
    """The rows of each named task, in order; TaskError when one is unknown, has no local
    data or has no generated answer."""
    _offline()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=bundled)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TaskError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    found = []
    for name in names:
        try:
            tasks = manager.load([name])["tasks"]
        except Exception as error:  # datasets raises many kinds when data is not local
            raise TaskError(f"{name}: its data cannot be loaded here (offline): {error}") from None
        if list(tasks) != [name]:
            raise TaskError(f"{name} is a group of tasks; name its tasks one by one")
        found.append(task_rows(name, tasks[name], limit))
    return found


def task_rows(name: str, task: Any, limit: int | None) -> TaskRows:
    """Prompt/answer rows of one built lm-eval task."""
    output_type = str(task.OUTPUT_TYPE)
    if output_type not in (GENERATE, CHOICE):
        raise TaskError(
            f"{name} is a {output_type} task (the model's probabilities of fixed answers), "
            "not one whose answer is generated"
        )
    docs = list(task.eval_docs)
    if limit is not None:
        docs = docs[:limit]
    if not docs:
        raise TaskError(f"{name} has no documents to evaluate")
    description = str(getattr(task.config, "description", "") or "")
    rows = []
    for number, doc in enumerate(docs):
        prompt = description + str(task.doc_to_text(doc))
        target = task.doc_to_target(doc)
        if output_type == CHOICE:
            choices = [str(c) for c in task.doc_to_choice(doc)]
            if len(choices) > len(LETTERS):
                raise TaskError(f"{name}: document {number} has more than 26 choices")
            index = target if isinstance(target, int) else choices.index(str(target))
            options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
            prompt = f"{prompt}\n{options}\nAnswer with the letter of the right option."
            answer = LETTERS[index]
        else:
            if isinstance(target, list):  # several accepted answers: the first
                target = target[0]
            if isinstance(target, int) and getattr(task.config, "doc_to_choice", None):
                target = task.doc_to_choice(doc)[target]  # an index into its choices
            answer = str(target)
        rows.append({"prompt": prompt, "answer": answer, "lm_eval_task": name})
    if output_type == CHOICE:
        scorer = "choice"
    elif all(_is_number(r["answer"]) for r in rows):
        scorer = "numeric"
    else:
        scorer = "exact"
    return TaskRows(name, output_type, scorer, rows)


def _is_number(text: str) -> bool:
    try:
        float(text.strip().replace(",", ""))
    except ValueError:
        return False
    return True
