"""verl's batch rules, checked at submission: a plan the platform accepts is one verl's update
loop can cut into mini and micro batches on the job's GPUs. The property test draws batch
settings and runs what the platform accepts through verl's own batch helpers (make_iterator,
prepare_micro_batches) the way verl's engine workers call them."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training_platform.backends.base import get_backend, validate_parameters
from training_platform.core.errors import InvalidInput

ALGORITHMS = ("ppo", "grpo", "gspo")


def _accepts(algorithm: str, values: dict[str, Any], gpus: int) -> Any:
    return validate_parameters(get_backend("verl", algorithm), values, gpus=gpus)


def _verl_cuts(train_batch_size: int, n: int, mini: int, micro: int, gpus: int) -> None:
    """One update step as verl 0.9.1's engine workers do it, on one data-parallel rank."""
    import torch
    from tensordict import TensorDict

    with warnings.catch_warnings():  # verl's engine package warns of engines not installed
        warnings.simplefilter("ignore")
        from verl.utils import tensordict_utils as tu
        from verl.workers.engine.utils import prepare_micro_batches

    global_mini = mini * n  # ray_trainer._update_actor: ppo_mini_batch_size x rollout.n
    assert global_mini % gpus == 0  # engine_workers.train_mini_batch asserts this
    assert train_batch_size >= mini  # ActorConfig.validate
    rows = train_batch_size * n // gpus  # this rank's share of the step
    step = TensorDict({"input_ids": torch.zeros(rows, 1)}, batch_size=[rows])
    for batch in tu.make_iterator(step, mini_batch_size=global_mini // gpus, epochs=1):
        tu.assign_non_tensor(batch, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro)
        micro_batches, _ = prepare_micro_batches(batch)
        assert sum(len(m) for m in micro_batches) == len(batch)
    # Log-probs of the whole step (rollout and reference) in micro batches of the same size.
    tu.assign_non_tensor(step, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro)
    prepare_micro_batches(step)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_the_defaults_pass_verl_on_1_2_4_and_8_gpus(algorithm: str, gpus: int) -> None:
    values = _accepts(algorithm, {}, gpus)
    _verl_cuts(
        values.train_batch_size, values.rollout.n, values.ppo_mini_batch_size, values.micro, gpus
    )


@pytest.mark.parametrize(
    ("values", "gpus", "field", "reason"),
    [
        ({"ppo_mini_batch_size": 24}, 1, "ppo_mini_batch_size", "must divide train_batch_size"),
        ({"ppo_mini_batch_size": 128}, 1, "ppo_mini_batch_size", "at most train_batch_size"),
        ({"train_batch_size": 6, "ppo_mini_batch_size": 6}, 4, "train_batch_size", "divisible"),
        (
            {"train_batch_size": 64, "ppo_mini_batch_size": 2},
            4,
            "ppo_mini_batch_size",
            r"must be divisible by the GPU count \(4\)",
        ),
        (
            {"ppo_mini_batch_size": 16, "micro_batch_size_per_gpu": 3},
            2,
            "micro_batch_size_per_gpu",
            "share of a mini batch: ppo_mini_batch_size x rollout.n / GPUs = 8",
        ),
    ],
)
def test_a_plan_verl_would_refuse_is_refused_naming_the_field(
    values: dict[str, Any], gpus: int, field: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason) as raised:
        _accepts("ppo", values, gpus)
    assert raised.value.loc == ("body", "hyperparameters", field)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    gpus=st.sampled_from([1, 2, 3, 4, 6, 8]),
    train_batch_size=st.integers(1, 96),
    mini=st.integers(1, 96),
    micro=st.none() | st.integers(1, 16),
    n=st.integers(1, 8),
)
def test_whatever_the_platform_accepts_verl_cuts_into_batches(
    algorithm: str, gpus: int, train_batch_size: int, mini: int, micro: int | None, n: int
) -> None:
    values: dict[str, Any] = {
        "train_batch_size": train_batch_size,
        "ppo_mini_batch_size": mini,
        "micro_batch_size_per_gpu": micro,
        "rollout": {"n": n if algorithm == "ppo" else max(2, n)},
    }
    try:
        accepted = _accepts(algorithm, values, gpus)
    except InvalidInput:
        return  # refused at submission: nothing reaches verl
    _verl_cuts(
        accepted.train_batch_size,
        accepted.rollout.n,
        accepted.ppo_mini_batch_size,
        accepted.micro,
        gpus,
    )
