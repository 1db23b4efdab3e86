"""Pipeline definitions: graph, references and parameters are checked before anything is stored,
and every refusal names the stage and the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from training_platform.core.errors import InvalidInput
from training_platform.pipelines import definition as dsl
from training_platform.pipelines import templates

SFT = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}


def _pipeline(**stages: Any) -> dict[str, Any]:
    return {"name": "p", "stages": stages}


def _refused(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as error:
        dsl.parse(data, overrides)
    return error.value


def test_every_shipped_template_parses_in_dependency_order() -> None:
    found = templates.all_templates()
    assert set(found) >= {"sft-dpo", "sft-grpo-evaluate", "sft-gspo"}
    for template in found.values():
        definition = dsl.parse(copy.deepcopy(template.data))
        order = dsl.topological_order(definition.stages)
        assert order[0] == "sft"
        for name, stage in definition.stages.items():
            assert all(order.index(d) < order.index(name) for d in stage.depends_on)
    chain = dsl.parse(found["sft-grpo-evaluate"].data).stages
    assert chain["grpo"].job["model"] == "${stages.sft.outputs.checkpoint}"  # type: ignore[index]
    assert dsl.kind_of(chain["evaluate"]) == "evaluate"


def test_parameters_are_substituted_keeping_their_types_and_overrides_win() -> None:
    data = {
        "name": "p",
        "parameters": {"steps": 5, "lr": 0.01, "model": "tiny-qwen2"},
        "stages": {
            "a": {
                "job": {
                    **SFT,
                    "model": "${parameters.model}",
                    "hyperparameters": {
                        "max_steps": "${parameters.steps}",
                        "learning_rate": "${parameters.lr}",
                    },
                }
            },
            "b": {"depends_on": ["a"], "job": {**SFT, "dataset": "tiny-${parameters.steps}"}},
        },
    }
    parsed = dsl.parse(data, {"steps": 7})
    a, b = parsed.stages["a"].job, parsed.stages["b"].job
    assert a is not None and b is not None
    assert a["hyperparameters"] == {"max_steps": 7, "learning_rate": 0.01}
    assert a["model"] == "tiny-qwen2"
    assert b["dataset"] == "tiny-7"  # inside a longer string: text
    assert parsed.parameters == {"steps": 7, "lr": 0.01, "model": "tiny-qwen2"}


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        (
            _pipeline(a={"depends_on": ["b"], "job": SFT}, b={"depends_on": ["a"], "job": SFT}),
            ("stages", "a", "depends_on"),
            "the stages form a cycle: a -> b -> a",
        ),
        (
            _pipeline(
                a={"depends_on": ["c"], "job": SFT},
                b={"depends_on": ["a"], "job": SFT},
                c={"depends_on": ["b"], "job": SFT},
            ),
            ("stages", "a", "depends_on"),
            "cycle: a -> c -> b -> a",
        ),
        (
            _pipeline(a={"depends_on": ["a"], "job": SFT}),
            ("stages", "a", "depends_on", 0),
            "cannot depend on itself",
        ),
        (
            _pipeline(a={"job": SFT}, b={"depends_on": ["nope"], "job": SFT}),
            ("stages", "b", "depends_on", 0),
            "unknown stage 'nope'; stages: a, b",
        ),
        (
            _pipeline(
                a={"job": SFT}, b={"job": {**SFT, "model": "${stages.x.outputs.checkpoint}"}}
            ),
            ("stages", "b", "job", "model"),
            "names an unknown stage",
        ),
        (
            _pipeline(
                a={"job": SFT}, b={"job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}}
            ),
            ("stages", "b", "job", "model"),
            "not upstream of 'b': add it to depends_on",
        ),
        (
            _pipeline(
                a={"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}},
                b={"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
            ),
            ("stages", "b", "job", "model"),
            "a evaluate stage has no output 'checkpoint'; it has job, accuracy",
        ),
        (
            _pipeline(
                a={"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}},
                b={"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.accuracy}"}},
            ),
            ("stages", "b", "job", "model"),
            "type mismatch: ${stages.a.outputs.accuracy} is a number, this field needs a model",
        ),
        (
            _pipeline(
                a={"job": SFT},
                b={
                    "depends_on": ["a"],
                    "when": [{"left": "${stages.a.outputs.checkpoint}", "op": ">", "right": 1}],
                    "job": SFT,
                },
            ),
            ("stages", "b", "when", 0, "left"),
            "type mismatch",
        ),
        (
            _pipeline(
                a={"job": SFT},
                b={
                    "depends_on": ["a"],
                    "job": {**SFT, "dataset": "${stages.a.outputs.checkpoint}"},
                },
            ),
            ("stages", "b", "job", "dataset"),
            "upstream outputs feed only the model, hyperparameters",
        ),
        (
            _pipeline(
                a={"job": SFT},
                b={
                    "depends_on": ["a"],
                    "job": {**SFT, "model": "x-${stages.a.outputs.checkpoint}"},
                },
            ),
            ("stages", "b", "job", "model"),
            "must be the whole value",
        ),
        (
            _pipeline(a={"job": {**SFT, "model": "${stage.a.checkpoint}"}}),
            ("stages", "a", "job", "model"),
            "malformed reference",
        ),
        (
            _pipeline(a={"job": {**SFT, "model": "${parameters.base}"}}),
            ("stages", "a", "job", "model"),
            "unknown parameter 'base'",
        ),
        (
            _pipeline(a={"job": SFT, "evaluate": {"model": "m", "dataset": "d"}}),
            ("stages", "a"),
            "exactly one of `job`, `evaluate`, `gate`, `select` or `merge`",
        ),
        (
            _pipeline(a={"job": {**SFT, "priority": 9}}),
            ("stages", "a", "job", "priority"),
            "comes from the pipeline",
        ),
        (
            _pipeline(a={"job": SFT, "depend_on": ["x"]}),
            ("stages", "a", "depend_on"),
            "Extra inputs are not permitted",
        ),
        ({"name": "p", "stages": {}}, ("stages",), "at least 1 item"),
        ({"name": "p", "stages": {"bad name": {"job": SFT}}}, ("stages",), ""),
    ],
)
def test_bad_definitions_are_refused_naming_stage_and_field(
    data: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    error = _refused(data)
    assert error.loc[: 2 + len(loc)] == ("body", "definition", *loc), error.loc
    assert message in error.message


def test_undeclared_parameter_overrides_are_refused() -> None:
    error = _refused(
        {"name": "p", "parameters": {"steps": 1}, "stages": {"a": {"job": SFT}}}, {"step": 2}
    )
    assert error.loc == ("body", "parameters", "step")
    assert "declared: steps" in error.message


def test_references_in_a_diamond_may_reach_any_ancestor() -> None:
    data = _pipeline(
        a={"job": SFT},
        b={"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
        c={"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
        d={
            "depends_on": ["b", "c"],
            "when": [
                {
                    "left": "${stages.b.outputs.metrics.loss}",
                    "op": "<",
                    "right": "${stages.a.outputs.metrics.loss}",
                }
            ],
            "evaluate": {"model": "${stages.a.outputs.checkpoint}", "dataset": "tiny-math-eval"},
        },
    )
    parsed = dsl.parse(data)
    order = dsl.topological_order(parsed.stages)
    assert order.index("a") < order.index("b") < order.index("d")
    assert dsl.descendants(parsed.stages, "b") == {"d"}
    assert dsl.ancestors(parsed.stages, "d") == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("left", "op", "right", "holds"),
    [(0.5, ">=", 0.5, True), (0.4, ">", 0.5, False), (1, "!=", 2, True), (3, "<=", 2, False)],
)
def test_conditions_compare_with_a_fixed_table(
    left: float, op: str, right: float, holds: bool
) -> None:
    assert dsl.compare(left, op, right) is holds
