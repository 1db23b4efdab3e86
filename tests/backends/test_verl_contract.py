"""Every override a verl backend emits is checked against the INSTALLED verl, without a GPU.

The plan's Hydra overrides are composed with verl's own config tree (`verl/trainer/config`,
`sft_trainer_engine` or `ppo_trainer`): a key verl does not have fails the composition. The
composed config then goes through verl's own checks: `validate_config` for RL, and the
dataclasses verl builds from each section (their `__post_init__` validates the values).
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import pytest

hydra = pytest.importorskip("hydra", reason="verl's environment (environments/gpu-verl.txt)")
verl = pytest.importorskip("verl")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from training_platform.assets.tiny import DATASETS_DIR  # noqa: E402
from training_platform.backends.base import (  # noqa: E402
    LaunchContext,
    LaunchPlan,
    get_backend,
    validate_parameters,
)
from training_platform.backends.verl.common import CONFIG_FILE  # noqa: E402

# verl's engine package warns about optional engines it cannot import (megatron, veomni...).
pytestmark = pytest.mark.filterwarnings("ignore:.* engine is not available:UserWarning")

CONFIG_DIR = str(Path(verl.__file__).resolve().parent / "trainer" / "config")
CONFIG_NAME = {
    "sft": "sft_trainer_engine",
    "ppo": "ppo_trainer",
    "grpo": "ppo_trainer",
    "gspo": "ppo_trainer",
}
RL = ("ppo", "grpo", "gspo")

# Everything a backend can emit, turned on at once (with values that differ from defaults).
EVERY_OPTION: dict[str, Any] = {
    "total_epochs": 3,
    "total_steps": 40,
    "strategy": "fsdp",
    "param_offload": True,
    "optimizer_offload": True,
    "attn_implementation": "flash_attention_2",
    "lora": {"rank": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
    "save_freq": 5,
    "test_freq": 10,
    "max_checkpoints": 2,
    "seed": 7,
}
SFT_OPTIONS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.1,
    "weight_decay": 0.0,
    "grad_clip": 0.5,
    "train_batch_size": 16,
    "micro_batch_size_per_gpu": 2,
    "max_length": 256,
    "truncation": "right",
}
RL_OPTIONS: dict[str, Any] = {
    "reward": "file:my-reward",
    "actor_lr": 3e-6,
    "train_batch_size": 32,
    "ppo_mini_batch_size": 8,
    "micro_batch_size_per_gpu": 2,
    "max_prompt_length": 256,
    "max_response_length": 128,
    "val_before_train": True,
    "val_samples": 32,
    "rollout": {
        "name": "sglang",
        "temperature": 0.7,
        "top_p": 0.9,
        "tensor_model_parallel_size": 2,
        "gpu_memory_utilization": 0.6,
    },
}
ALGORITHM_OPTIONS: dict[str, dict[str, Any]] = {
    "sft": SFT_OPTIONS,
    "ppo": {**RL_OPTIONS, "critic_lr": 2e-5, "gamma": 0.99, "lam": 0.95},
    "grpo": {**RL_OPTIONS, "kl_loss_coef": 0.01},
    "gspo": {**RL_OPTIONS, "clip_ratio_low": 2e-4, "clip_ratio_high": 5e-4},
}
# Every option set fresh; a resumed run's overrides (the checkpoint path, the resume mode)
# are the same whatever the options, so resuming is composed once per algorithm.
CASES = [
    pytest.param(
        algorithm, values, resume, id=f"{'resume' if resume else 'fresh'}-{algorithm}-{name}"
    )
    for algorithm in CONFIG_NAME
    for name, values in (
        ("defaults", {}),
        ("every-option", {**EVERY_OPTION, **ALGORITHM_OPTIONS[algorithm]}),
        # LoRA with vLLM goes through verl's rank check; every-option uses SGLang.
        ("lora-vllm", {"lora": {"rank": 8}, "strategy": "fsdp2"}),
    )
    for resume in (False, True)
    if not resume or name == "defaults"
]


def context_for(model_dir: Path, *, resume: bool = False, gpus: int = 4) -> LaunchContext:
    """A context with a real model dir (verl's model config loads it) and odd paths."""
    return LaunchContext(
        run_dir="/srv/tp/runs/3/attempt-2",
        python="/opt/tp/.venv/bin/python",
        model_path=str(model_dir),
        dataset_path="/srv/tp/datasets/it's a [weird], ${path}\\.parquet",
        dataset_format="rl",
        devices=tuple(range(gpus)),
        gpus=gpus,
        resume_from="/srv/tp/runs/3/attempt-1/checkpoints/global_step_20" if resume else None,
        reward_path="/srv/tp/rewards/0123abcd.py",
        reward_function="compute_score",
    )


def make_plan(algorithm: str, values: dict[str, Any], context: LaunchContext) -> LaunchPlan:
    """The plan of verl/<algorithm>, validated as the API validates a job."""
    backend = get_backend("verl", algorithm)
    return backend.plan(validate_parameters(backend, values, gpus=context.gpus), context)


def verl_overrides(plan: LaunchPlan) -> list[str]:
    """The Hydra overrides after `-m verl.trainer.<entry point>` in the wrapped command."""
    command: list[str] = json.loads(plan.files[CONFIG_FILE])["command"]
    module = next(i for i, part in enumerate(command) if part.startswith("verl.trainer."))
    return command[module + 1 :]


def compose_with_verl(algorithm: str, overrides: list[str]) -> DictConfig:
    """verl's config with the overrides applied, as `hydra.main` would build it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(CONFIG_NAME[algorithm], overrides=overrides, return_hydra_config=True)
    with open_dict(config):
        del config["hydra"]
    return config


@pytest.fixture(scope="module")
def vllm_lora_check() -> Iterator[None]:
    """verl checks LoRA ranks with a helper from a module that imports vLLM (GPU-only)."""
    name = "verl.workers.rollout.vllm_rollout.utils"
    stand_in = types.ModuleType(name)
    ranks = get_args(Literal[1, 8, 16, 32, 64, 128, 256, 320, 512])  # vLLM's MaxLoRARanks

    def get_vllm_max_lora_rank(rank: int) -> int:
        if rank > max(ranks):
            raise ValueError(f"lora_rank must be <= {max(ranks)}")
        return int(min(r for r in ranks if r >= rank))

    stand_in.get_vllm_max_lora_rank = get_vllm_max_lora_rank  # type: ignore[attr-defined]
    saved = sys.modules.get(name)
    sys.modules[name] = stand_in
    yield
    if saved is None:
        del sys.modules[name]
    else:
        sys.modules[name] = saved


def verl_accepts(algorithm: str, config: DictConfig) -> None:
    """verl's own validation of a composed config, short of starting Ray or a GPU."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    if algorithm == "sft":
        for section in ("model", "engine", "optim", "checkpoint"):
            omega_conf_to_dataclass(config[section])
        return
    use_critic = need_critic(config)
    validate_config(
        config, use_reference_policy=need_reference_policy(config), use_critic=use_critic
    )
    omega_conf_to_dataclass(config.algorithm)
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(config.actor_rollout_ref.model)
    if use_critic:
        omega_conf_to_dataclass(config.critic)
    get_adv_estimator_fn(config.algorithm.adv_estimator)  # type: ignore[no-untyped-call]
    get_policy_loss_fn(config.actor_rollout_ref.actor.policy_loss.loss_mode)  # type: ignore[no-untyped-call]


# --- every key exists and verl accepts the values -----------------------------------------


@pytest.mark.usefixtures("vllm_lora_check")
@pytest.mark.parametrize(("algorithm", "values", "resume"), CASES)
def test_verl_composes_and_accepts_the_plan(
    algorithm: str, values: dict[str, Any], resume: bool, tiny_model_dir: Path
) -> None:
    context = context_for(tiny_model_dir, resume=resume)
    config = compose_with_verl(algorithm, verl_overrides(make_plan(algorithm, values, context)))
    verl_accepts(algorithm, config)

    # Paths arrive exactly, however odd (quotes, brackets, `${`, backslashes).
    assert config.data.train_files == context.dataset_path
    model = config.model if algorithm == "sft" else config.actor_rollout_ref.model
    assert model.path == context.model_path
    assert config.trainer.default_local_dir == f"{context.run_dir}/checkpoints"
    assert config.trainer.logger == ["console", "file"]
    if resume:
        assert config.trainer.resume_mode == "resume_path"
        assert config.trainer.resume_from_path == context.resume_from
    else:
        assert config.trainer.resume_mode == "disable"
        assert config.trainer.resume_from_path is None
    if algorithm in RL:
        assert config.trainer.n_gpus_per_node == context.gpus
        assert config.reward.custom_reward_function.path == context.reward_path
        assert config.reward.custom_reward_function.name == context.reward_function


@pytest.mark.usefixtures("vllm_lora_check")
@pytest.mark.parametrize("algorithm", list(CONFIG_NAME))
def test_every_option_reaches_its_verl_key(algorithm: str, tiny_model_dir: Path) -> None:
    values = {**EVERY_OPTION, **ALGORITHM_OPTIONS[algorithm]}
    context = context_for(tiny_model_dir)
    config = compose_with_verl(algorithm, verl_overrides(make_plan(algorithm, values, context)))
    trainer = config.trainer
    assert (trainer.total_epochs, trainer.total_training_steps) == (3, 40)
    assert (trainer.save_freq, trainer.test_freq) == (5, 10)
    if algorithm == "sft":
        assert config.engine.strategy == "fsdp"
        assert (config.engine.param_offload, config.engine.optimizer_offload) == (True, True)
        assert config.model.lora_rank == 16
        assert config.model.lora_alpha == 32
        assert list(config.model.target_modules) == ["q_proj", "v_proj"]
        assert config.model.override_config.attn_implementation == "flash_attention_2"
        assert config.optim.lr == pytest.approx(2e-4)
        assert config.data.val_files == context.dataset_path
        assert (config.data.max_length, config.data.truncation) == (256, "right")
        assert trainer.max_ckpt_to_keep == 2
        return
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    assert actor.strategy == "fsdp"
    assert (actor.fsdp_config.param_offload, actor.fsdp_config.optimizer_offload) == (True, True)
    assert config.actor_rollout_ref.model.lora_rank == 16
    assert (rollout.name, rollout.tensor_model_parallel_size) == ("sglang", 2)
    assert (rollout.temperature, rollout.top_p, rollout.gpu_memory_utilization) == (0.7, 0.9, 0.6)
    assert (config.data.max_prompt_length, config.data.max_response_length) == (256, 128)
    assert actor.optim.lr == pytest.approx(3e-6)
    assert trainer.val_before_train is True
    assert config.data.val_max_samples == 32
    assert trainer.max_actor_ckpt_to_keep == 2


def test_a_key_verl_does_not_have_fails_the_composition() -> None:
    with pytest.raises(ConfigCompositionException):
        compose_with_verl("grpo", ["actor_rollout_ref.actor.no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        compose_with_verl("sft", ["trainer.no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        compose_with_verl("ppo", ["reward.custom_reward_function.no_such_key=x"])


# --- what each algorithm must emit --------------------------------------------------------


def _algorithm_config(algorithm: str, tiny_model_dir: Path) -> DictConfig:
    return compose_with_verl(
        algorithm, verl_overrides(make_plan(algorithm, {}, context_for(tiny_model_dir)))
    )


def test_gspo_is_grpo_with_the_gspo_loss_and_tight_clipping(tiny_model_dir: Path) -> None:
    config = _algorithm_config("gspo", tiny_model_dir)
    actor = config.actor_rollout_ref.actor
    assert config.algorithm.adv_estimator == "grpo"
    assert actor.policy_loss.loss_mode == "gspo"
    assert actor.loss_agg_mode == "seq-mean-token-mean"
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (3e-4, 4e-4)
    assert actor.use_kl_loss is False
    assert config.algorithm.use_kl_in_reward is False
    assert config.actor_rollout_ref.rollout.n > 1


def test_verl_computes_the_gspo_loss_of_the_composed_config(tiny_model_dir: Path) -> None:
    """The end-to-end runs train GRPO and PPO; GSPO differs from GRPO by its loss alone, so the
    loss verl registers for it runs here on the actor config verl builds from the plan: one
    sequence-level importance ratio per response, clipped with the plan's tight range."""
    import torch
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.config import omega_conf_to_dataclass

    config = _algorithm_config("gspo", tiny_model_dir)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    # verl fills the batch figures in place before each loss
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=5, global_batch_size=2)
    loss_fn = get_policy_loss_fn(actor.policy_loss.loss_mode)  # type: ignore[no-untyped-call]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    old = torch.log(torch.full((2, 3), 0.5))
    new = old.clone().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, metrics = loss_fn(
        old_log_prob=old,
        log_prob=new,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=actor.loss_agg_mode,
        config=actor,
    )
    loss.backward()
    # unchanged policy: every ratio is 1, the loss is minus the mean advantage of the
    # sequences (seq-mean-token-mean), and nothing is clipped
    assert torch.isclose(loss, torch.tensor(0.0), atol=1e-6)
    assert metrics["actor/pg_clipfrac"] == 0.0
    assert new.grad is not None and bool(torch.all(new.grad[mask == 0] == 0))
    # one token of the first response moves its whole sequence's ratio: beyond the clip range
    # (4e-4) the sequence is clipped, every token of it, and only it
    moved = old.clone()
    moved[0, 0] += 0.01
    _, metrics = loss_fn(
        old_log_prob=old,
        log_prob=moved,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=actor.loss_agg_mode,
        config=actor,
    )
    assert metrics["actor/pg_clipfrac"] == pytest.approx(3 / 5)


def test_grpo_samples_groups_and_uses_a_kl_loss(tiny_model_dir: Path) -> None:
    config = _algorithm_config("grpo", tiny_model_dir)
    actor = config.actor_rollout_ref.actor
    assert config.algorithm.adv_estimator == "grpo"
    assert config.actor_rollout_ref.rollout.n > 1
    assert actor.use_kl_loss is True
    assert actor.kl_loss_type == "low_var_kl"
    assert config.algorithm.use_kl_in_reward is False
    assert actor.policy_loss.loss_mode == "vanilla"
    assert config.critic.enable is False


def test_ppo_trains_a_critic_on_the_policy_model(tiny_model_dir: Path) -> None:
    config = _algorithm_config("ppo", tiny_model_dir)
    assert config.algorithm.adv_estimator == "gae"
    assert config.critic.enable is True
    assert config.critic.model.path == str(tiny_model_dir)
    assert config.critic.strategy == config.actor_rollout_ref.actor.strategy


# Each estimator once, the two algorithms in turn: the keys are the same for both.
@pytest.mark.parametrize(
    ("algorithm", "estimator"),
    [("ppo", "k1"), ("grpo", "k2"), ("ppo", "k3"), ("grpo", "low_var_kl")],
)
def test_kl_in_the_reward_and_as_a_loss_reach_verl_with_their_estimator(
    algorithm: str, estimator: str, tiny_model_dir: Path
) -> None:
    from verl.trainer.ppo.core_algos import kl_penalty
    from verl.trainer.ppo.utils import need_reference_policy

    values = {"kl_coef": 0.1, "kl_loss_coef": 0.02, "kl_estimator": estimator}
    plan = make_plan(algorithm, values, context_for(tiny_model_dir))
    config = compose_with_verl(algorithm, verl_overrides(plan))
    verl_accepts(algorithm, config)
    actor = config.actor_rollout_ref.actor
    assert config.algorithm.use_kl_in_reward is True
    assert (config.algorithm.kl_penalty, config.algorithm.kl_ctrl.kl_coef) == (estimator, 0.1)
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.02, estimator)
    assert need_reference_policy(config)
    # verl computes every estimator the platform offers.
    import torch

    kl_penalty(torch.zeros(1, 2), torch.full((1, 2), -0.5), estimator)

    off = make_plan(algorithm, {"kl_coef": 0, "kl_loss_coef": 0}, context_for(tiny_model_dir))
    config = compose_with_verl(algorithm, verl_overrides(off))
    verl_accepts(algorithm, config)
    assert config.algorithm.use_kl_in_reward is False
    assert config.actor_rollout_ref.actor.use_kl_loss is False
    assert not need_reference_policy(config)


def test_ppo_penalises_kl_in_the_reward_by_default_as_the_trl_backend_does(
    tiny_model_dir: Path,
) -> None:
    from training_platform.backends.trl.ppo import PpoParameters as TrlPpo
    from training_platform.backends.verl.rl_parameters import PpoParameters as VerlPpo

    config = _algorithm_config("ppo", tiny_model_dir)
    assert config.algorithm.use_kl_in_reward is True and config.algorithm.kl_penalty == "k1"
    assert (
        config.algorithm.kl_ctrl.kl_coef
        == TrlPpo().kl_coef
        == VerlPpo.model_fields["kl_coef"].default
    )
    assert config.actor_rollout_ref.actor.use_kl_loss is False


def test_the_cpu_smoke_mode_composes(tiny_model_dir: Path) -> None:
    context = LaunchContext(**{**context_for(tiny_model_dir).__dict__, "gpus": 0, "devices": ()})
    plan = make_plan("sft", {"device": "cpu", "lora": {"rank": 4}}, context)
    config = compose_with_verl("sft", verl_overrides(plan))
    verl_accepts("sft", config)
    assert config.trainer.device == "cpu"
    assert config.engine.strategy == "fsdp2"
    assert OmegaConf.to_container(config.model.override_config) == {"attn_implementation": "sdpa"}


def test_the_longest_example_is_counted_as_verl_counts_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Job preparation refuses a verl SFT job whose longest example exceeds max_length; its
    count must be verl's: each message rendered alone, the system prompt dropped after the
    first. verl's MultiTurnSFTDataset with truncation "error" raises for exactly those rows."""
    import pandas as pd
    from transformers import AutoTokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from training_platform.backends.verl.lengths import longest_example

    bundled = DATASETS_DIR / "tiny-sft.jsonl"
    rows = [json.loads(line) for line in bundled.read_text().splitlines()]
    long_chat = {
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "What is 4 + 18? " * 6},
            {"role": "assistant", "content": "4 + 18 = 22."},
            {"role": "user", "content": "And 2 - 1?"},
            {"role": "assistant", "content": "2 - 1 = 1."},
        ]
    }
    rows = [*rows[:40], long_chat]
    path = tmp_path / "sft.parquet"
    pd.DataFrame(rows).to_parquet(path)
    longest, where = longest_example(str(tiny_model_dir), path)
    assert where == len(rows) - 1

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def verl_dataset(max_length: int) -> Any:
        config = {"max_length": max_length, "truncation": "error", "messages_key": "messages"}
        return MultiTurnSFTDataset(str(path), tokenizer, OmegaConf.create(config))

    fits = verl_dataset(longest)
    assert int(fits[where]["attention_mask"].sum()) == longest
    with pytest.raises(ValueError, match="is larger than"):
        verl_dataset(longest - 1)[where]


@pytest.mark.parametrize(("algorithm", "values"), [("sft", {"test_freq": 5}), ("grpo", {})])
def test_a_validation_split_is_what_verl_validates_on(
    algorithm: str, values: dict[str, Any], tiny_model_dir: Path
) -> None:
    import dataclasses

    context = dataclasses.replace(
        context_for(tiny_model_dir),
        dataset_format=get_backend("verl", algorithm).data_task,
        dataset_path="/srv/tp/datasets/prepared/x-train.parquet",
        validation_path="/srv/tp/datasets/prepared/x-validation.parquet",
    )
    if algorithm != "sft":
        values = {"reward": "numeric"}
    overrides = verl_overrides(make_plan(algorithm, values, context))
    assert "data.val_files=/srv/tp/datasets/prepared/x-validation.parquet" in overrides
    assert "data.train_files=/srv/tp/datasets/prepared/x-train.parquet" in overrides
