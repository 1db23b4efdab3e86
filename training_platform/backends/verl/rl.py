"""verl PPO, GRPO and GSPO: `python -m verl.trainer.main_ppo` (Hydra config `ppo_trainer`).

verl's RL loop generates with vLLM or SGLang on GPU hosts. `device: "cpu"` is a smoke test for
tiny models, not a way to train: verl runs in the host's vLLM environment (vLLM's CPU build
with verl over it), on a Ray of its own with one logical GPU, with the platform's CPU modules
(trainers/verl_ext/cpu.py, cpu_rl.py, vllm_cpu.py).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.backends.verl.common import (
    COMPAT_MODULE,
    CPU_ENV,
    CPU_RL_MODULE,
    HydraValue,
    overrides,
    trainer_pairs,
    wrapper_plan,
)
from training_platform.backends.verl.rl_parameters import (
    GrpoParameters,
    GspoParameters,
    KlOptions,
    PpoParameters,
    RlParameters,
)

RL_MODULE = "verl.trainer.main_ppo"
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
Pairs = list[tuple[str, HydraValue]]


def _shared_pairs(values: RlParameters, context: LaunchContext) -> Pairs:
    """Data, policy model, rollout and reward: the same keys for every RL algorithm."""
    rollout = values.rollout
    pairs: Pairs = [
        ("data.train_files", context.dataset_path),
        # Validation reads the same prepared file: the platform prepares one per job.
        ("data.val_files", context.validation_path or context.dataset_path),
        ("data.val_max_samples", values.val_samples),
        ("data.train_batch_size", values.train_batch_size),
        ("data.max_prompt_length", values.max_prompt_length),
        ("data.max_response_length", values.max_response_length),
        ("data.seed", values.seed),
        ("actor_rollout_ref.model.path", context.model_path),
        # An added key needs Hydra's `+`: override_config is empty in verl's defaults.
        (
            "+actor_rollout_ref.model.override_config.attn_implementation",
            values.attn_implementation,
        ),
        (f"{ACTOR}.strategy", values.strategy),
        (f"{ACTOR}.optim.lr", values.actor_lr),
        (f"{ACTOR}.ppo_mini_batch_size", values.ppo_mini_batch_size),
        (f"{ACTOR}.ppo_micro_batch_size_per_gpu", values.micro),
        (f"{ACTOR}.fsdp_config.param_offload", values.param_offload),
        (f"{ACTOR}.fsdp_config.optimizer_offload", values.optimizer_offload),
        (f"{ROLLOUT}.name", rollout.name),
        (f"{ROLLOUT}.n", rollout.n),
        (f"{ROLLOUT}.temperature", rollout.temperature),
        (f"{ROLLOUT}.top_p", rollout.top_p),
        (f"{ROLLOUT}.tensor_model_parallel_size", rollout.tensor_model_parallel_size),
        (f"{ROLLOUT}.gpu_memory_utilization", rollout.gpu_memory_utilization),
        (f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", values.micro),
        (f"{ROLLOUT}.seed", values.seed),
        ("trainer.val_before_train", values.val_before_train),
        ("trainer.max_actor_ckpt_to_keep", values.max_checkpoints),
    ]
    if values.lora is not None:
        pairs += [
            ("actor_rollout_ref.model.lora_rank", values.lora.rank),
            ("actor_rollout_ref.model.lora_alpha", values.lora.alpha),
            ("actor_rollout_ref.model.target_modules", values.lora.target_modules),
        ]
    # Without a resolved reward file verl falls back to its own scorers keyed by data_source.
    if context.reward_path is not None:
        pairs += [
            ("reward.custom_reward_function.path", context.reward_path),
            ("reward.custom_reward_function.name", context.reward_function or "compute_score"),
        ]
    return pairs


def _reference_pairs(values: RlParameters) -> Pairs:
    """The frozen reference policy that a KL loss compares against."""
    return [
        (
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
            values.micro,
        ),
        ("actor_rollout_ref.ref.fsdp_config.param_offload", values.param_offload),
    ]


def _kl_pairs(values: KlOptions) -> Pairs:
    """KL to the reference policy: in the reward, as a loss term, or both (or neither)."""
    pairs: Pairs = [
        ("algorithm.use_kl_in_reward", values.kl_coef > 0),
        (f"{ACTOR}.use_kl_loss", values.kl_loss_coef > 0),
    ]
    if values.kl_coef > 0:
        pairs += [
            ("algorithm.kl_penalty", values.kl_estimator),
            ("algorithm.kl_ctrl.kl_coef", values.kl_coef),
        ]
    if values.kl_loss_coef > 0:
        pairs += [
            (f"{ACTOR}.kl_loss_coef", values.kl_loss_coef),
            (f"{ACTOR}.kl_loss_type", values.kl_estimator),
        ]
    if values.uses_reference:
        assert isinstance(values, RlParameters)
        pairs += _reference_pairs(values)
    return pairs


def _ppo_pairs(values: PpoParameters, context: LaunchContext) -> Pairs:
    return [
        ("algorithm.adv_estimator", "gae"),
        ("algorithm.gamma", values.gamma),
        ("algorithm.lam", values.lam),
        *_kl_pairs(values),
        ("critic.enable", True),
        # The critic starts from the policy's weights; verl adds the value head.
        ("critic.model.path", context.model_path),
        ("+critic.model.override_config.attn_implementation", values.attn_implementation),
        ("critic.strategy", values.strategy),
        ("critic.optim.lr", values.critic_lr),
        ("critic.ppo_micro_batch_size_per_gpu", values.micro),
        ("critic.fsdp.param_offload", values.param_offload),
        ("critic.fsdp.optimizer_offload", values.optimizer_offload),
        ("trainer.max_critic_ckpt_to_keep", values.max_checkpoints),
    ]


def _grpo_pairs(values: GrpoParameters) -> Pairs:
    return [
        ("algorithm.adv_estimator", "grpo"),
        *_kl_pairs(values),
        ("critic.enable", False),
    ]


def _gspo_pairs(values: GspoParameters) -> Pairs:
    return [
        ("algorithm.adv_estimator", "grpo"),
        (f"{ACTOR}.policy_loss.loss_mode", "gspo"),
        (f"{ACTOR}.loss_agg_mode", "seq-mean-token-mean"),
        (f"{ACTOR}.clip_ratio_low", values.clip_ratio_low),
        (f"{ACTOR}.clip_ratio_high", values.clip_ratio_high),
        ("algorithm.use_kl_in_reward", False),
        (f"{ACTOR}.use_kl_loss", False),
        ("critic.enable", False),
    ]


def _algorithm_pairs(values: RlParameters, context: LaunchContext) -> Pairs:
    if isinstance(values, PpoParameters):
        return _ppo_pairs(values, context)
    if isinstance(values, GrpoParameters):
        return _grpo_pairs(values)
    if isinstance(values, GspoParameters):
        return _gspo_pairs(values)
    raise TypeError(f"no verl RL algorithm takes {type(values).__name__}")


# The CPU smoke mode: Ray with one logical GPU (verl's resource pools count GPUs only) and
# enough logical CPUs for verl's helper actors; vLLM's CPU build has no sleep mode, no cache
# to free and no CUDA graphs; one worker per helper pool, not eight, on a 1-2 core machine.
CPU_PAIRS: Pairs = [
    ("trainer.device", "cpu"),
    ("+ray_kwargs.ray_init.num_gpus", 1),
    ("ray_kwargs.ray_init.num_cpus", 16),
    ("+ray_kwargs.ray_init.include_dashboard", False),
    (f"{ROLLOUT}.enforce_eager", True),
    (f"+{ROLLOUT}.enable_sleep_mode", False),
    (f"{ROLLOUT}.free_cache_engine", False),
    (f"{ROLLOUT}.agent.num_workers", 1),
    ("reward.num_workers", 1),
    ("transfer_queue.backend.SimpleStorage.num_data_storage_units", 1),
    ("data.dataloader_num_workers", 0),
]
CPU_RL_ENV = {
    **CPU_ENV,
    "VERL_USE_EXTERNAL_MODULES": f"{CPU_ENV['VERL_USE_EXTERNAL_MODULES']},{CPU_RL_MODULE}",
    "VERL_PLATFORM": "cpu_rl",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
    "TP_VLLM_CPU_RELOADABLE": "1",  # trainers/verl_ext/vllm_cpu.py
    "RAY_USAGE_STATS_ENABLED": "0",
}


def rl_plan(
    values: RlParameters, context: LaunchContext, *, backend: str, algorithm: str
) -> LaunchPlan:
    """The wrapper plan around `python -m verl.trainer.main_ppo` with the algorithm's keys."""
    on_cpu = values.device == "cpu"
    python = context.python
    if on_cpu:
        if not context.vllm_python:
            raise ValueError(
                "device 'cpu' runs verl in the host's vLLM environment, and this host has "
                "none: install it with `make vllm-env` (or set TP_VLLM_PYTHON)"
            )
        python = context.vllm_python
    pairs = [
        *_algorithm_pairs(values, context),
        *_shared_pairs(values, context),
        *trainer_pairs(
            values, context, experiment=f"verl-{algorithm}", gpus=1 if on_cpu else context.gpus
        ),
        *(CPU_PAIRS if on_cpu else []),
    ]
    steps_from = {
        "dataset": context.dataset_path,
        "batch_size": values.train_batch_size,
        "data_parallel": 1,
        "epochs": values.total_epochs,
    }
    return wrapper_plan(
        backend=backend,
        algorithm=algorithm,
        context=context,
        command=[python, "-m", RL_MODULE, *overrides(pairs)],
        verl_env=CPU_RL_ENV if on_cpu else {"VERL_USE_EXTERNAL_MODULES": COMPAT_MODULE},
        max_steps=values.total_steps,
        steps_from=None if values.total_steps else steps_from,
        export_final_model=values.export_final_model,
    )


class _VerlRl:
    backend: ClassVar[str] = "verl"
    graceful_stop: ClassVar[bool] = False
    algorithm: ClassVar[str]
    requires_gpu: ClassVar[bool] = True
    data_task: ClassVar[str] = "rl"
    validates: ClassVar[bool] = True  # uses a validation split (job.validation)
    parameters: ClassVar[type[BaseModel]]

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The wrapper's argv and the main_ppo command it starts."""
        assert isinstance(hyperparameters, self.parameters)
        assert isinstance(hyperparameters, RlParameters)
        return rl_plan(hyperparameters, context, backend=self.backend, algorithm=self.algorithm)


@register
class VerlPpo(_VerlRl):
    """PPO with a critic (GAE) on vLLM/SGLang rollouts."""

    algorithm: ClassVar[str] = "ppo"
    description: ClassVar[str] = "PPO with a learned critic (GAE advantages), verl on GPUs."
    parameters: ClassVar[type[BaseModel]] = PpoParameters


@register
class VerlGrpo(_VerlRl):
    """GRPO: group-relative advantages, no critic."""

    algorithm: ClassVar[str] = "grpo"
    description: ClassVar[str] = "GRPO: group-relative advantages with a KL loss, verl on GPUs."
    parameters: ClassVar[type[BaseModel]] = GrpoParameters


@register
class VerlGspo(_VerlRl):
    """GSPO: sequence-level importance ratios, no critic, no KL."""

    algorithm: ClassVar[str] = "gspo"
    description: ClassVar[str] = "GSPO: sequence-level clipped policy optimization, verl on GPUs."
    parameters: ClassVar[type[BaseModel]] = GspoParameters
