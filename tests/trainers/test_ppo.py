"""The PPO trainer's pieces, in process: advantage math, masks, data order, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from training_platform.trainers.ppo import (
    PpoRun,
    gae,
    masked_mean,
    masked_whiten,
    position_ids,
    token_logprobs,
)
from training_platform.trainers.trl_train import PpoConfig, parse_config

BUILTIN_REWARDS = Path(__file__).resolve().parents[2] / "training_platform/rewards/builtin.py"


def _reference_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> list[float]:
    """Advantages by the definition: discounted sums of TD errors (slow and obvious)."""
    n = len(rewards)
    padded = [*values, 0.0]
    deltas = [rewards[t] + gamma * padded[t + 1] - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)) for t in range(n)]


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (1.0, 0.95), (0.9, 0.5)])
def test_gae_matches_the_definition(gamma: float, lam: float) -> None:
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.1, -0.4, 0.2], [0.2, 0.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, gamma=gamma, lam=lam)
    for row in range(2):
        expected = _reference_gae(rewards[row].tolist(), values[row].tolist(), gamma, lam)
        assert advantages[row].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(returns, advantages + values)


def test_with_gamma_and_lambda_one_every_token_gets_the_final_score() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    advantages, _ = gae(rewards, torch.zeros(1, 3), gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[1.0, 1.0, 1.0]]


def test_masked_statistics_ignore_padding() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    whitened = masked_whiten(values, mask)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(whitened**2, mask).item() == pytest.approx(1.0, abs=1e-4)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(2.0, abs=1e-5)


def test_positions_skip_left_padding() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_token_logprobs_pick_the_tokens() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    result = token_logprobs(logits, torch.tensor([[1, 2]]))
    assert torch.allclose(result.exp(), torch.tensor([[0.25, 0.8]]))


# --- a run in process on the tiny model ---------------------------------------------------


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "data_source": "t",
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
            "extra_info": {"index": i, "split": "train"},
        }
        for i in range(count)
    ]


def _config(model: Path, tmp_path: Path, **hp: Any) -> PpoConfig:
    from datasets import Dataset

    data = tmp_path / "rl.parquet"
    if not data.exists():
        Dataset.from_list(_rows(12)).to_parquet(str(data))
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    config = {
        "algorithm": "ppo",
        "model_path": str(model),
        "dataset_path": str(data),
        "dataset_format": "rl",
        "output_dir": str(run_dir),
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "reward": {"path": str(BUILTIN_REWARDS), "function": "format"},
        "hyperparameters": {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "max_completion_length": 6,
            "max_steps": 2,
            "ppo_epochs": 2,
            **hp,
        },
    }
    parsed = parse_config(json.dumps(config))
    assert isinstance(parsed, PpoConfig)
    return parsed


def test_the_data_order_is_fixed_per_epoch_and_covers_each_epoch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(_config(tiny_model_dir, tmp_path))
    assert (run.rollout_batch, run.batches_per_epoch) == (4, 3)
    epoch = [row["extra_info"]["index"] for step in range(3) for row in run.batch_rows(step)]
    assert sorted(epoch) == list(range(12))
    again = PpoRun(_config(tiny_model_dir, tmp_path))
    assert [r["extra_info"] for r in again.batch_rows(4)] == [
        r["extra_info"] for r in run.batch_rows(4)
    ]
    assert run.batch_rows(3) != run.batch_rows(0)  # a new epoch, a new order


def test_a_rollout_masks_everything_after_the_end_token(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(_config(tiny_model_dir, tmp_path, max_completion_length=12))
    batch, stats = run.rollout(run.batch_rows(0))
    responses = batch.input_ids[:, batch.prompt_length :]
    eos = torch.tensor(run.eos_ids)
    for tokens, mask in zip(responses, batch.response_mask, strict=True):
        valid = int(mask.sum())
        assert mask[:valid].eq(1).all() and mask[valid:].eq(0).all()
        ends = torch.isin(tokens[:valid], eos).nonzero()
        # At most one end token, and if there is one it closes the response.
        assert len(ends) <= 1 and (len(ends) == 0 or int(ends[0]) == valid - 1)
    assert (batch.advantages * (1 - batch.response_mask)).abs().sum() == 0
    assert 0 <= stats["reward/mean"] <= 1
    assert stats["completions/mean_length"] == pytest.approx(batch.response_mask.sum(-1).mean())


def test_an_update_moves_the_policy_and_the_value_head(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(_config(tiny_model_dir, tmp_path))
    before = [p.detach().clone() for p in run.parameters]
    batch, _ = run.rollout(run.batch_rows(0))
    stats = run.update(batch)
    assert {"loss", "ppo/policy_loss", "ppo/value_loss", "ppo/approx_kl", "grad_norm"} <= set(stats)
    moved = [not torch.equal(a, b) for a, b in zip(before, run.parameters, strict=True)]
    assert all(moved)
    # The reference stays where it started.
    assert run.reference is not None
    assert not any(p.requires_grad for p in run.reference.parameters())


def test_a_checkpoint_restores_step_value_head_and_optimizer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(_config(tiny_model_dir, tmp_path))
    run.train()
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()

    resumed = PpoRun(_config(tiny_model_dir, tmp_path, max_steps=3).model_copy(
        update={"resume_from": checkpoint}
    ))  # fmt: skip
    assert resumed.global_step == 2
    for a, b in zip(run.value_head.parameters(), resumed.value_head.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (
        resumed.optimizer.state_dict()["state"].keys() == run.optimizer.state_dict()["state"].keys()
    )
    policy = dict(run.policy.named_parameters())
    for name, parameter in resumed.policy.named_parameters():
        assert torch.equal(parameter, policy[name]), name


def test_a_stop_request_saves_a_checkpoint_at_that_step_and_stops(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from training_platform.trainers.progress import StoppedOnRequest

    config = _config(tiny_model_dir, tmp_path, max_steps=5, save_steps=4)
    (config.output_dir / "stop-request").write_text("now\n")
    with pytest.raises(StoppedOnRequest) as stopped:
        PpoRun(config).train()
    assert stopped.value.step == 1
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-1" / "model.safetensors").is_file()
    records = [json.loads(line) for line in config.metrics_path.read_text().splitlines()]
    assert records[-1]["type"] == "stopped" and records[-1]["step"] == 1
    assert not (tmp_path / "run" / "model").exists()


def test_with_lora_the_reference_is_the_model_without_its_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(_config(tiny_model_dir, tmp_path, lora={"rank": 2, "alpha": 4}))
    assert run.reference is None and run.adapter
    trainable = sum(p.numel() for p in run.parameters)
    total = sum(p.numel() for p in run.policy.parameters())
    assert trainable < total / 5
    _, stats = run.rollout(run.batch_rows(0))
    # A fresh adapter (B = 0) changes nothing yet: policy and reference agree.
    assert stats["ppo/kl"] == pytest.approx(0.0, abs=1e-5)


def test_the_kl_estimators_are_verls() -> None:
    from training_platform.trainers.ppo import kl_estimate

    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    d = logprobs - ref
    assert torch.allclose(kl_estimate(logprobs, ref, "k1"), d)
    assert torch.allclose(kl_estimate(logprobs, ref, "k2"), 0.5 * d**2)
    k3 = torch.exp(-d) - 1 + d
    assert torch.allclose(kl_estimate(logprobs, ref, "k3"), k3)
    assert (k3 >= 0).all() and float(k3[0, 2]) == 0.0  # same log-prob, no divergence
    assert torch.allclose(kl_estimate(logprobs, ref, "low_var_kl"), k3.clamp(-10, 10))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logprobs, ref, "k4")


def test_a_kl_loss_with_the_chosen_estimator_joins_the_update(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = PpoRun(
        _config(tiny_model_dir, tmp_path, kl_coef=0.0, kl_loss_coef=0.5, kl_estimator="k3")
    )
    batch, stats = run.rollout(run.batch_rows(0))
    assert stats["ppo/kl"] == 0.0  # no KL in the reward
    stats = run.update(batch)
    # The first pass starts at the reference: k3 is 0 there and grows as the policy moves.
    assert stats["ppo/kl_loss"] >= 0.0
    plain = PpoRun(_config(tiny_model_dir, tmp_path))
    assert "ppo/kl_loss" not in plain.update(plain.rollout(plain.batch_rows(0))[0])
