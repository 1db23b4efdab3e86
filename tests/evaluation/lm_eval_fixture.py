"""A folder of lm-evaluation-harness tasks with their data on disk (nothing is downloaded):
a generate_until task, a multiple_choice task and a loglikelihood task."""

from __future__ import annotations

import json
from pathlib import Path

ADD = """task: tiny_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/add.jsonl
test_split: test
output_type: generate_until
doc_to_text: "What is {{{{a}}}} + {{{{b}}}}?"
doc_to_target: "{{{{a + b}}}}"
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""
CHOICE = """task: tiny_pick
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/pick.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
LIKELIHOOD = """task: tiny_likely
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/add.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{a}}}} + {{{{b}}}} ="
doc_to_target: " {{{{a + b}}}}"
metric_list:
  - metric: acc
"""


def write_tasks(folder: Path) -> Path:
    """The tasks' folder (their YAML) under `folder`, their data beside it."""
    tasks = folder / "tasks"
    tasks.mkdir(parents=True)
    with (folder / "add.jsonl").open("w") as handle:
        for a in range(5):
            handle.write(json.dumps({"a": a, "b": 2 * a}) + "\n")
    with (folder / "pick.jsonl").open("w") as handle:
        for i in range(4):
            choices = [str(i + 1), str(i), str(i + 2)]
            handle.write(
                json.dumps({"question": f"Which is {i}?", "choices": choices, "label": 1}) + "\n"
            )
    for name, text in (("add", ADD), ("pick", CHOICE), ("likely", LIKELIHOOD)):
        (tasks / f"{name}.yaml").write_text(text.format(data=folder))
    return tasks
