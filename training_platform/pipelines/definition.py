"""Pipeline definitions: their shape, references, parameters and graph checks. Pure: no I/O.

A definition names stages; each stage is a training job (the fields of POST /jobs) or a built-in
step, depends on other stages, may carry conditions on upstream outputs, and may take upstream
outputs as inputs through references:

    ${parameters.NAME}                    a pipeline parameter (substituted on submit)
    ${stages.STAGE.outputs.OUTPUT}        an output of an upstream stage (resolved when the
                                          stage starts), e.g. ${stages.sft.outputs.checkpoint}

Every check here raises InvalidInput whose loc names the stage and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from training_platform.backends.builtin.merge import Dtype as MergeDtype
from training_platform.backends.builtin.merge import InputParameters, SharedParameters
from training_platform.backends.builtin.merge import Method as MergeMethod
from training_platform.core.errors import InvalidInput
from training_platform.jobs.schemas import JobName, JobPolicy, Resources
from training_platform.surgery.schemas import SweepEvaluation
from training_platform.worker.queues import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN

STAGE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
PARAMETER_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
StageName = Annotated[str, StringConstraints(pattern=STAGE_NAME_PATTERN)]
Scalar = str | int | float | bool

EVALUATE_BACKEND = ("builtin", "evaluate")
# Where every definition error is reported: the request's `definition` field.
ROOT: tuple[str, ...] = ("body", "definition")

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_PARAMETER_REF = re.compile(r"^\s*parameters\.([A-Za-z_][A-Za-z0-9_]*)\s*$")
_STAGE_REF = re.compile(r"^\s*stages\.([A-Za-z][A-Za-z0-9_-]*)\.outputs\.([A-Za-z0-9_./-]+)\s*$")


class Condition(BaseModel):
    """Run the stage only if `left op right` holds, e.g. an upstream accuracy above a bar."""

    model_config = ConfigDict(extra="forbid")

    left: str | float = Field(
        ..., description="A number or a reference such as ${stages.eval.outputs.accuracy}."
    )
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    right: str | float = Field(..., description="A number or a reference.")


class EvaluateStep(BaseModel):
    """The built-in evaluation: score a model on held-out prompt/answer data with a rule metric.

    Records `accuracy`, `correct` and `total` as the stage's outputs.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | int = Field(..., description="A model name or id, or an upstream checkpoint.")
    dataset: str | int = Field(..., description="A prompt_answer dataset name or id.")
    metric: str = Field("numeric_match", description="exact_match or numeric_match.")
    max_new_tokens: int | str = Field(32, description="Tokens generated per prompt.")
    max_samples: int | str | None = Field(None, description="Score only the first rows.")
    batch_size: int | str = Field(16, description="Prompts generated together.")
    engine: str = Field("auto", description="auto, transformers or vllm.")
    scorer: InlineScorer = Field(
        "numeric", description="The evaluation's scorer (exact, numeric, rouge_l, ...)."
    )
    resources: Resources = Field(default_factory=Resources)
    policy: JobPolicy = Field(default_factory=JobPolicy)


def _inline_scorer(spec: str | None) -> str | None:
    """A scorer a stage runs in the pipeline pass: not one that runs on a worker."""
    if spec is None:
        return None
    from training_platform.evaluation import scoring

    try:
        scorer = scoring.parse(spec)
    except InvalidInput as error:
        raise ValueError(error.message) from None
    if scorer.deferred:
        raise ValueError(f"{spec} runs on a worker; a stage scores with an inline scorer")
    return spec


InlineScorer = Annotated[str, AfterValidator(_inline_scorer)]
MAX_GATE_PAIRS = 20


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


class GateStep(BaseModel):
    """Stop the pipeline when a candidate regresses significantly against its baseline.

    Both are evaluations of upstream evaluate stages on the same dataset, compared sample by
    sample (McNemar for pass/fail scorers, a paired bootstrap otherwise). The gate fails when
    the candidate's mean is lower by more than `max_drop` and the drop is significant at
    `alpha`. A guard suite is several pairs (lists of the same length, one pair per dataset):
    the gate fails when any pair regresses so, its p-values adjusted over the pairs
    (Benjamini-Hochberg). Records `delta` (the worst pair's), `p_value` (that pair's),
    `improved` and `regressed` (summed over the pairs) as its outputs.
    """

    model_config = ConfigDict(extra="forbid")

    baseline: str | list[str] = Field(
        ...,
        description="e.g. ${stages.eval_base.outputs.evaluation}, or one per dataset of a guard "
        "suite.",
    )
    candidate: str | list[str] = Field(
        ..., description="e.g. ${stages.eval_new.outputs.evaluation}, paired with the baseline."
    )
    scorer: InlineScorer | None = Field(
        None, description="Default: the baseline evaluation's scorer."
    )
    max_drop: float = Field(0.0, ge=0, le=1, description="A drop this small always passes.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired test.")

    @model_validator(mode="after")
    def _pairs(self) -> GateStep:
        baselines, candidates = self.pairs()
        if len(baselines) != len(candidates):
            raise ValueError("baseline and candidate must list as many evaluations each")
        if not 1 <= len(baselines) <= MAX_GATE_PAIRS:
            raise ValueError(f"a gate compares 1 to {MAX_GATE_PAIRS} pairs")
        return self

    def pairs(self) -> tuple[list[str], list[str]]:
        """The baselines and the candidates, as lists."""
        return _as_list(self.baseline), _as_list(self.candidate)


class SelectStep(BaseModel):
    """Evaluate checkpoints of a job one after another and register the best.

    Records `checkpoint` (the best one, registered as the model pipeline-<id>.<stage>),
    `step`, `score`, `evaluation` and `job` (the job whose checkpoints competed).
    """

    model_config = ConfigDict(extra="forbid")

    job: str | int = Field(..., description="A job id, or e.g. ${stages.sft.outputs.job}.")
    steps: list[int] | None = Field(
        None, min_length=1, max_length=20, description="Which checkpoints; default: every one."
    )
    dataset: str | int = Field(..., description="A prompt_answer dataset name or id.")
    scorer: InlineScorer = Field("numeric", description="The scorer the best is chosen by.")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated per prompt.")
    max_samples: int | None = Field(None, ge=1, description="Score only the first rows.")
    batch_size: int = Field(16, ge=1, le=1024, description="Prompts generated together.")
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    resources: Resources = Field(default_factory=Resources)
    policy: JobPolicy = Field(default_factory=JobPolicy)


class MergeStepInput(InputParameters):
    """A model of a merge stage: a catalog model or an upstream checkpoint, and its own
    parameters (which ones apply depends on the method)."""

    model: str | int = Field(
        ..., description="A model name or id, or e.g. ${stages.sft.outputs.checkpoint}."
    )


class MergeSweepSpec(BaseModel):
    """Make the merge stage a sweep: one candidate per grid point, each evaluated; the best
    is the stage's checkpoint (candidates are registered as pipeline-<id>.<stage>.<i>)."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[float]] = Field(
        ..., min_length=1, max_length=2, description="e.g. {t: [0.3, 0.5, 0.7]}."
    )
    evaluate: SweepEvaluation
    mode: Literal["min", "max"] = "max"


class MergeStep(BaseModel):
    """Merge models with mergekit (the fields of POST /merges but the name): the merged model
    is registered as pipeline-<id>.<stage>. Records `checkpoint` (that model) and `job`; with
    `sweep`, the best candidate, its `score`, and the first candidate's job."""

    model_config = ConfigDict(extra="forbid")

    method: MergeMethod
    base: str | int | None = Field(
        None, description="The base model, by name or id, or an upstream checkpoint."
    )
    models: list[MergeStepInput] = Field(..., min_length=1, max_length=16)
    parameters: SharedParameters = Field(default_factory=SharedParameters)
    dtype: MergeDtype | None = None
    tokenizer: Literal["base", "union"] = "base"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    sweep: MergeSweepSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    policy: JobPolicy = Field(default_factory=JobPolicy)

    def model_fields_with_refs(self) -> list[tuple[tuple[str | int, ...], str | int]]:
        """Where models are named: ("base",) and ("models", i, "model")."""
        found: list[tuple[tuple[str | int, ...], str | int]] = []
        if self.base is not None:
            found.append((("base",), self.base))
        found += [(("models", i, "model"), m.model) for i, m in enumerate(self.models)]
        return found


class StageDefinition(BaseModel):
    """One node of the pipeline: a training job or a built-in step."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", max_length=1000)
    depends_on: list[StageName] = Field(
        default_factory=list, max_length=100, description="Stages that must succeed first."
    )
    when: list[Condition] = Field(
        default_factory=list,
        max_length=20,
        description="Conditions on upstream outputs; all must hold or the stage is skipped.",
    )
    job: dict[str, Any] | None = Field(
        None,
        description="A training job: the fields of POST /jobs (backend, algorithm, model, "
        "dataset, hyperparameters, resources, policy) without name and priority.",
    )
    evaluate: EvaluateStep | None = None
    gate: GateStep | None = None
    select: SelectStep | None = None
    merge: MergeStep | None = None


class PipelineDefinition(BaseModel):
    """A whole pipeline as written in YAML or JSON."""

    model_config = ConfigDict(extra="forbid")

    name: JobName
    description: str = Field("", max_length=2000)
    priority: int = Field(
        PRIORITY_DEFAULT,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="Every stage's job runs at this priority (higher starts first).",
    )
    parameters: dict[Annotated[str, StringConstraints(pattern=PARAMETER_NAME_PATTERN)], Scalar] = (
        Field(default_factory=dict, max_length=100, description="Defaults of ${parameters.X}.")
    )
    stages: dict[Annotated[str, StringConstraints(pattern=STAGE_NAME_PATTERN)], StageDefinition] = (
        Field(..., min_length=1, max_length=100)
    )


# --- outputs ------------------------------------------------------------------------------

# Types of values that flow between stages.
MODEL, NUMBER, INTEGER, EVALUATION = "model", "number", "integer", "evaluation"

OUTPUTS: dict[str, dict[str, str]] = {
    "train": {"job": INTEGER, "checkpoint": MODEL},
    "evaluate": {
        "job": INTEGER,
        "accuracy": NUMBER,
        "correct": INTEGER,
        "total": INTEGER,
        "evaluation": EVALUATION,
        "score": NUMBER,
    },
    "gate": {"delta": NUMBER, "p_value": NUMBER, "improved": INTEGER, "regressed": INTEGER},
    "select": {
        "job": INTEGER,
        "checkpoint": MODEL,
        "step": INTEGER,
        "score": NUMBER,
        "evaluation": EVALUATION,
    },
    "merge": {"job": INTEGER, "checkpoint": MODEL, "score": NUMBER},
}
# The metric the pipeline view shows for a stage of each kind.
KEY_METRIC = {"train": "loss", "evaluate": "accuracy"}
# Kinds that run no job of their own on the stage definition's fields.
STEP_KINDS = ("gate", "select", "merge")


def kind_of(stage: StageDefinition) -> str:
    """`train`, `evaluate`, `gate`, `select` or `merge`."""
    if stage.gate is not None:
        return "gate"
    if stage.merge is not None:
        return "merge"
    if stage.select is not None:
        return "select"
    if stage.evaluate is not None:
        return "evaluate"
    job = stage.job or {}
    if (job.get("backend"), job.get("algorithm")) == EVALUATE_BACKEND:
        return "evaluate"
    return "train"


def output_type(kind: str, output: str) -> str | None:
    """The type of a stage output, or None if a stage of this kind has no such output."""
    if output.startswith("metrics.") and len(output) > len("metrics."):
        return NUMBER  # the last value the stage's job reported for that metric key
    return OUTPUTS[kind].get(output)


def outputs_help(kind: str) -> str:
    """The outputs a stage of this kind offers, for error messages."""
    return ", ".join([*OUTPUTS[kind], "metrics.<key>"])


# --- references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRef:
    """A reference to an upstream stage's output."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"${{stages.{self.stage}.outputs.{self.output}}}"


def _stage_error(stage: str, loc: tuple[str | int, ...], message: str) -> InvalidInput:
    return InvalidInput((*ROOT, "stages", stage, *loc), f"stage {stage!r}: {message}")


def whole_ref(value: Any) -> StageRef | None:
    """The stage reference `value` consists of, or None when it is anything else."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.fullmatch(value.strip())
    if match is None:
        return None
    ref = _STAGE_REF.match(match.group(1))
    return StageRef(ref.group(1), ref.group(2)) if ref else None


def _walk(
    value: Any, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every leaf of a JSON value with its location."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*loc, index))
    else:
        yield loc, value


def substitute_parameters(
    value: Any, parameters: Mapping[str, Scalar], stage: str, loc: tuple[str | int, ...] = ()
) -> Any:
    """`value` with every ${parameters.X} replaced; a reference that is the whole string keeps
    the parameter's type. Stage references are left for later."""
    if isinstance(value, Mapping):
        return {k: substitute_parameters(v, parameters, stage, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_parameters(v, parameters, stage, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(expression: str) -> Scalar | None:
        found = _PARAMETER_REF.match(expression)
        if found is None:
            if _STAGE_REF.match(expression):
                return None  # resolved when the stage starts
            raise _stage_error(
                stage,
                loc,
                f"malformed reference ${{{expression}}}: use ${{parameters.NAME}} or "
                "${stages.STAGE.outputs.OUTPUT}",
            )
        name = found.group(1)
        if name not in parameters:
            declared = ", ".join(sorted(parameters)) or "none"
            raise _stage_error(
                stage, loc, f"unknown parameter {name!r} in ${{{expression}}}; declared: {declared}"
            )
        return parameters[name]

    whole = _REFERENCE.fullmatch(value)
    if whole is not None:
        replaced = lookup(whole.group(1))
        return value if replaced is None else replaced

    def text(match: re.Match[str]) -> str:
        replaced = lookup(match.group(1))
        return match.group(0) if replaced is None else str(replaced)

    return _REFERENCE.sub(text, value)


# --- the graph ----------------------------------------------------------------------------


def topological_order(stages: Mapping[str, StageDefinition]) -> list[str]:
    """Stage names so that every stage comes after its dependencies; refuses unknown names,
    self-dependencies and cycles (naming the stages of the cycle)."""
    for name, stage in stages.items():
        for index, dependency in enumerate(stage.depends_on):
            if dependency == name:
                raise _stage_error(name, ("depends_on", index), "a stage cannot depend on itself")
            if dependency not in stages:
                known = ", ".join(stages)
                raise _stage_error(
                    name, ("depends_on", index), f"unknown stage {dependency!r}; stages: {known}"
                )
            if stage.depends_on.count(dependency) > 1:
                raise _stage_error(name, ("depends_on", index), f"{dependency!r} is listed twice")
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise _stage_error(
                name,
                ("depends_on",),
                f"the stages form a cycle: {' -> '.join(cycle)}; a pipeline must be acyclic",
            )
        state[name] = 1
        for dependency in stages[name].depends_on:
            visit(dependency, [*path, name])
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def ancestors(stages: Mapping[str, StageDefinition], name: str) -> set[str]:
    """Every stage `name` depends on, directly or not."""
    found: set[str] = set()
    pending = list(stages[name].depends_on)
    while pending:
        current = pending.pop()
        if current not in found:
            found.add(current)
            pending.extend(stages[current].depends_on)
    return found


def descendants(stages: Mapping[str, StageDefinition], name: str) -> set[str]:
    """Every stage that depends on `name`, directly or not."""
    return {other for other in stages if name in ancestors(stages, other)}


# --- where references may go --------------------------------------------------------------


def job_request(stage: StageDefinition) -> dict[str, Any]:
    """The stage as the fields of POST /jobs (name and priority come from the pipeline);
    empty for a gate, a select or a merge, whose jobs the engine makes."""
    if stage.gate is not None or stage.select is not None or stage.merge is not None:
        return {}
    if stage.evaluate is not None:
        step = stage.evaluate.model_dump(mode="json")
        hyperparameters = {
            key: step.pop(key)
            for key in ("metric", "max_new_tokens", "max_samples", "batch_size", "engine")
        }
        if hyperparameters["max_samples"] is None:
            del hyperparameters["max_samples"]
        return {
            "backend": EVALUATE_BACKEND[0],
            "algorithm": EVALUATE_BACKEND[1],
            "model": step["model"],
            "dataset": step["dataset"],
            "hyperparameters": hyperparameters,
            "resources": step["resources"],
            "policy": step["policy"],
        }
    return dict(stage.job or {})


def request_loc(stage: StageDefinition, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where a field of the stage's job request sits in the definition."""
    if stage.evaluate is None:
        return ("job", *loc)
    if loc[:1] == ("hyperparameters",):
        return ("evaluate", *loc[1:])
    return ("evaluate", *loc)


def references(stage: StageDefinition) -> Iterator[tuple[tuple[str | int, ...], StageRef, str]]:
    """Every stage reference in the stage: (definition location, reference, expected type).

    Upstream outputs may feed the model (a checkpoint), hyperparameters (numbers) and
    conditions (numbers); anywhere else, or inside a longer string, they are refused.
    """
    request = job_request(stage)
    for loc, value in _walk(request):
        where = request_loc(stage, loc)
        if not isinstance(value, str) or "${" not in value:
            continue
        ref = whole_ref(value)
        if ref is None:
            raise InvalidInput(
                where,
                f"{value!r}: a stage reference must be the whole value, e.g. "
                "${stages.sft.outputs.checkpoint}",
            )
        if loc == ("model",):
            yield where, ref, MODEL
        elif loc[:1] == ("hyperparameters",) and len(loc) == 2:
            yield where, ref, NUMBER
        else:
            raise InvalidInput(
                where,
                f"{ref} cannot go here: upstream outputs feed only the model, hyperparameters "
                "and `when` conditions",
            )
    steps: list[tuple[tuple[str | int, ...], Any, str]] = []
    if stage.gate is not None:
        for side in ("baseline", "candidate"):
            value = getattr(stage.gate, side)
            if isinstance(value, list):
                steps += [(("gate", side, i), item, EVALUATION) for i, item in enumerate(value)]
            else:
                steps.append((("gate", side), value, EVALUATION))
    if stage.select is not None and isinstance(stage.select.job, str):
        steps = [(("select", "job"), stage.select.job, INTEGER)]
    if stage.merge is not None:
        for loc, value in stage.merge.model_fields_with_refs():
            if isinstance(value, str) and "${" in value:
                steps.append((("merge", *loc), value, MODEL))
    for where, value, expected in steps:
        ref = whole_ref(value)
        if ref is None:
            raise InvalidInput(
                where,
                f"{value!r}: give a reference such as "
                + (
                    "${stages.eval.outputs.evaluation}"
                    if expected == EVALUATION
                    else "${stages.sft.outputs.checkpoint}, or a model name"
                    if expected == MODEL
                    else "${stages.sft.outputs.job}, or a job id"
                ),
            )
        yield where, ref, expected
    for index, condition in enumerate(stage.when):
        for side in ("left", "right"):
            value = getattr(condition, side)
            if isinstance(value, str):
                ref = whole_ref(value)
                if ref is None:
                    raise InvalidInput(
                        ("when", index, side),
                        f"{value!r} is neither a number nor a reference such as "
                        "${stages.eval.outputs.accuracy}",
                    )
                yield ("when", index, side), ref, NUMBER


def _fits(expected: str, actual: str) -> bool:
    if expected == NUMBER:
        return actual in (NUMBER, INTEGER)
    return expected == actual


def check_references(stages: Mapping[str, StageDefinition]) -> None:
    """Every reference names an upstream stage, an output it has, of a type that fits."""
    for name, stage in stages.items():
        try:
            found = list(references(stage))
        except InvalidInput as error:
            raise _stage_error(name, error.loc, error.message) from None
        upstream = ancestors(stages, name)
        for loc, ref, expected in found:
            if ref.stage not in stages:
                raise _stage_error(
                    name, loc, f"{ref} names an unknown stage; stages: {', '.join(stages)}"
                )
            if ref.stage not in upstream:
                raise _stage_error(
                    name,
                    loc,
                    f"{ref} refers to stage {ref.stage!r}, which is not upstream of {name!r}: "
                    f"add it to depends_on",
                )
            kind = kind_of(stages[ref.stage])
            actual = output_type(kind, ref.output)
            if actual is None:
                raise _stage_error(
                    name,
                    loc,
                    f"{ref}: a {kind} stage has no output {ref.output!r}; it has "
                    f"{outputs_help(kind)}",
                )
            if not _fits(expected, actual):
                raise _stage_error(
                    name, loc, f"type mismatch: {ref} is a {actual}, this field needs a {expected}"
                )


def parse(data: Any, overrides: Mapping[str, Any] | None = None) -> PipelineDefinition:
    """A definition from decoded JSON/YAML with parameter overrides applied and substituted,
    its graph and references checked. Catalog and backend checks come later (service)."""
    if not isinstance(data, Mapping):
        raise InvalidInput(ROOT, "a pipeline definition must be a mapping with name and stages")
    try:
        definition = PipelineDefinition.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidInput((*ROOT, *first["loc"]), str(first["msg"])) from None
    parameters = dict(definition.parameters)
    for key, value in (overrides or {}).items():
        if key not in parameters:
            declared = ", ".join(sorted(parameters)) or "none"
            raise InvalidInput(
                ("body", "parameters", key),
                f"the pipeline declares no parameter {key!r}; declared: {declared}",
            )
        if not isinstance(value, str | int | float | bool):
            raise InvalidInput(("body", "parameters", key), "must be a string, number or boolean")
        parameters[key] = value
    stages: dict[str, StageDefinition] = {}
    for name, stage in definition.stages.items():
        raw = stage.model_dump(mode="json", exclude_defaults=False)
        substituted = substitute_parameters(raw, parameters, name)
        try:
            stages[name] = StageDefinition.model_validate(substituted)
        except ValidationError as error:
            first = error.errors()[0]
            raise _stage_error(name, tuple(first["loc"]), str(first["msg"])) from None
        given = [
            key
            for key in ("job", "evaluate", "gate", "select", "merge")
            if getattr(stages[name], key) is not None
        ]
        if len(given) != 1:
            raise _stage_error(
                name, (), "give exactly one of `job`, `evaluate`, `gate`, `select` or `merge`"
            )
        for forbidden in ("name", "priority"):
            if forbidden in (stages[name].job or {}):
                raise _stage_error(
                    name,
                    ("job", forbidden),
                    f"`{forbidden}` comes from the pipeline; remove it from the stage",
                )
    topological_order(stages)
    check_references(stages)
    return definition.model_copy(update={"parameters": parameters, "stages": stages})


def compare(left: float, op: str, right: float) -> bool:
    """Evaluate a condition's operator (no eval: a fixed table)."""
    table = {
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
        "==": left == right,
        "!=": left != right,
    }
    return table[op]
