"""verl SFT: `torchrun -m verl.trainer.sft_trainer` (Hydra config `sft_trainer_engine`).

`device: "cpu"` is a smoke-test path for tiny models, not a way to train: one process runs
verl's FSDP2 engine over gloo with the platform's CPU plugin (trainers/verl_ext/cpu.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, Field, ValidationInfo, model_validator

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.backends.verl.common import (
    COMPAT_MODULE,
    CPU_ENV,
    HydraValue,
    VerlCommon,
    field_error,
    gpus_of,
    overrides,
    refuse_on_cpu,
    trainer_pairs,
    wrapper_plan,
)
from training_platform.backends.verl.lengths import longest_example

SFT_MODULE = "verl.trainer.sft_trainer"


class VerlSftParameters(VerlCommon):
    """Hyperparameters of verl SFT, with their limits."""

    device: Literal["gpu", "cpu"] = Field(
        "gpu", description="cpu: smoke test for tiny models (one process, FSDP2 over gloo)."
    )
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "cosine"] = Field("cosine", description="LR schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, le=1000, description="Gradient norm clipping.")
    train_batch_size: int = Field(32, ge=1, le=65_536, description="Examples per step, all GPUs.")
    micro_batch_size_per_gpu: int = Field(
        4,
        ge=1,
        le=4096,
        description="verl SFT batches by token count (use_dynamic_bsz, on by default: each "
        "forward pass on a GPU takes whole examples up to max_token_len_per_gpu, 8,192 tokens), "
        "so this does not set the examples per forward pass; verl reads it as the validation "
        "batch size and where token-count batching is off.",
    )
    max_length: int = Field(1024, ge=16, le=131_072, description="Tokens per example.")
    assistant_only_loss: bool = Field(
        True,
        description="verl's SFT dataset masks the loss to the assistant turns: the only choice "
        "here (the TRL backend also trains on every token).",
    )
    truncation: Literal["error", "left", "right"] = Field(
        "error", description="What to do with a longer example: fail, or cut it."
    )

    @model_validator(mode="after")
    def _fits_the_resources(self, info: ValidationInfo) -> Self:
        if not self.assistant_only_loss:
            raise field_error(
                ("assistant_only_loss",),
                "verl SFT trains on the assistant turns only; the TRL backend trains on every "
                "token with assistant_only_loss false",
                False,
            )
        gpus = gpus_of(info)
        if self.device == "gpu" and gpus < 1:
            raise field_error(
                ("device",),
                "verl needs at least one GPU: ask for gpus >= 1, "
                "or set device 'cpu' for the smoke test with a tiny model",
                self.device,
            )
        if self.device == "cpu":
            refuse_on_cpu(self, gpus)
        processes = max(gpus, 1)
        if self.train_batch_size % processes:
            raise field_error(
                ("train_batch_size",),
                f"must be divisible by the number of GPUs ({processes})",
                self.train_batch_size,
            )
        return self


@register
class VerlSft:
    """SFT with verl's FSDP engine under torchrun."""

    backend: ClassVar[str] = "verl"
    graceful_stop: ClassVar[bool] = False
    algorithm: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised fine-tuning with verl (FSDP, multi-GPU)."
    requires_gpu: ClassVar[bool] = True
    data_task: ClassVar[str] = "sft"
    validates: ClassVar[bool] = True  # uses a validation split (job.validation)
    parameters: ClassVar[type[BaseModel]] = VerlSftParameters

    def check_examples(
        self, hyperparameters: BaseModel, model_path: str, dataset_path: Path
    ) -> str | None:
        """Why the prepared examples cannot run (one longer than max_length, which verl would
        raise on mid-run with truncation "error"), or None. Called by job preparation."""
        assert isinstance(hyperparameters, VerlSftParameters)
        if hyperparameters.truncation != "error":
            return None
        longest, row = longest_example(model_path, dataset_path)
        if longest <= hyperparameters.max_length:
            return None
        return (
            f"hyperparameters.max_length: the longest example (row {row}) is {longest} tokens "
            f"as verl renders it, over max_length {hyperparameters.max_length}; raise "
            'max_length, or set truncation to "left" or "right" to cut such examples'
        )

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The wrapper's argv and the torchrun command it starts."""
        assert isinstance(hyperparameters, VerlSftParameters)
        values = hyperparameters
        on_cpu = values.device == "cpu"
        processes = 1 if on_cpu else max(context.gpus, 1)
        command = [
            context.python,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a private rendezvous on a free local port
            "--nnodes=1",
            f"--nproc_per_node={processes}",
            "-m",
            SFT_MODULE,
            *overrides(_pairs(values, context, processes)),
        ]
        verl_env = CPU_ENV if on_cpu else {"VERL_USE_EXTERNAL_MODULES": COMPAT_MODULE}
        steps_from = {
            "dataset": context.dataset_path,
            "batch_size": values.train_batch_size,
            "data_parallel": processes,
            "epochs": values.total_epochs,
        }
        return wrapper_plan(
            backend=self.backend,
            algorithm=self.algorithm,
            context=context,
            command=command,
            verl_env=verl_env,
            max_steps=values.total_steps,
            steps_from=None if values.total_steps else steps_from,
            export_final_model=values.export_final_model,
        )


def _pairs(
    values: VerlSftParameters, context: LaunchContext, processes: int
) -> list[tuple[str, HydraValue]]:
    pairs: list[tuple[str, HydraValue]] = [
        ("data.train_files", context.dataset_path),
        # Validation reads the same prepared file: the platform prepares one per job.
        (
            "data.val_files",
            (context.validation_path or context.dataset_path) if values.test_freq else None,
        ),
        ("data.messages_key", "messages"),
        ("data.train_batch_size", values.train_batch_size),
        ("data.micro_batch_size_per_gpu", values.micro_batch_size_per_gpu),
        ("data.max_length", values.max_length),
        ("data.truncation", values.truncation),
        ("model.path", context.model_path),
        # An added key needs Hydra's `+`: override_config is empty in verl's defaults.
        ("+model.override_config.attn_implementation", values.attn_implementation),
        ("engine.strategy", values.strategy),
        ("engine.param_offload", values.param_offload),
        ("engine.optimizer_offload", values.optimizer_offload),
        ("engine.seed", values.seed),
        ("optim.lr", values.learning_rate),
        ("optim.lr_scheduler_type", values.lr_scheduler),
        ("optim.lr_warmup_steps_ratio", values.warmup_ratio),
        ("optim.weight_decay", values.weight_decay),
        ("optim.clip_grad", values.grad_clip),
        ("trainer.max_ckpt_to_keep", values.max_checkpoints),
    ]
    if values.lora is not None:
        pairs += [
            ("model.lora_rank", values.lora.rank),
            ("model.lora_alpha", values.lora.alpha),
            ("model.target_modules", values.lora.target_modules),
        ]
    if values.device == "cpu":
        pairs += [
            ("trainer.device", "cpu"),
            # Loader worker processes only cost time and memory for a tiny model on 1-2 cores.
            ("data.num_workers", 0),
        ]
    pairs += trainer_pairs(values, context, experiment="verl-sft", gpus=processes)
    return pairs
