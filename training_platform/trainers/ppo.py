"""PPO for causal language models, the platform's own: small, single process, CPU or one GPU.

Why our own and not TRL: TRL removed PPOTrainer in 1.13. Pinning TRL 1.12 for PPO alone would
mean a second training environment beside the TRL 1.16 one (every other algorithm), kept in
step with transformers and peft by hand, for code upstream no longer fixes; and its PPO scores
with a reward *model* (a sequence classifier) where the platform's rewards are rule functions
`compute_score(data_source, solution_str, ground_truth, extra_info)`. What PPO needs is short
enough to own, on the same model classes, data, rewards and progress records as the rest.

One global step is one PPO iteration:
1. rollout: sample a completion for each of `per_device_train_batch_size x
   gradient_accumulation_steps x num_mini_batches` prompts with the current policy;
2. score each completion with the reward function (verl's signature); per-token reward is
   `-kl_coef x KL`, plus the score on the completion's last token, where KL is the per-token
   estimate `kl_estimator` names (k1 = log pi - log pi_ref by default; see `kl_estimate`);
3. values from a linear value head on the policy's last hidden state (shared trunk, as TRL's
   old AutoModelForCausalLMWithValueHead); advantages by GAE(gamma, lam), whitened;
4. `ppo_epochs` passes over the batch in `num_mini_batches` optimizer steps, each accumulated
   over micro-batches of `per_device_train_batch_size`: clipped surrogate policy loss plus
   `vf_coef` x clipped value loss, plus `kl_loss_coef` x the mean KL estimate of the current
   policy to the reference (0 by default: the KL is in the reward).
The reference policy is a frozen copy of the starting model (with LoRA: the same model with the
adapter switched off). The model stays in eval mode throughout: dropout would make the ratio of
new to old log-probabilities differ from 1 before any update.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from training_platform.trainers.progress import (
    ProgressWriter,
    StoppedOnRequest,
    console_line,
    directory_size,
    stop_requested,
)
from training_platform.trainers.trl_train import (
    PpoConfig,
    PpoHyperparameters,
    load_reward_function,
    lora_config,
    score,
    task_dataset,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "ppo_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"


class ValueHead(nn.Module):
    """A scalar value per position, read from the last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # Small outputs at first: large random values would dominate the first advantages.
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(batch, length, hidden) -> (batch, length)."""
        return cast("Tensor", self.linear(hidden)).squeeze(-1)


@dataclass
class Rollout:
    """One batch of sampled completions and what the update needs of them."""

    input_ids: Tensor  # (B, P + R): prompt left-padded, response right-padded
    attention_mask: Tensor  # (B, P + R)
    response_mask: Tensor  # (B, R), 1.0 up to and including the first end-of-sequence token
    prompt_length: int
    logprobs: Tensor  # (B, R) under the sampling policy
    values: Tensor  # (B, R)
    advantages: Tensor  # (B, R)
    returns: Tensor  # (B, R)
    ref_logprobs: Tensor  # (B, R) under the reference policy


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimates of KL(pi || pi_ref) from sampled tokens, as verl names them:
    k1 = log pi - log pi_ref; k2 = (log pi - log pi_ref)^2 / 2; k3 = r - 1 - log r with
    r = pi_ref / pi (unbiased and never negative); low_var_kl = k3 clipped to [-10, 10]."""
    difference = logprobs - ref_logprobs
    if estimator == "k1":
        return difference
    if estimator == "k2":
        return 0.5 * difference.square()
    k3 = torch.exp(-difference) - 1.0 + difference
    if estimator == "k3":
        return k3
    if estimator == "low_var_kl":
        return k3.clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True) -> Tensor:
    """Normalize to unit variance (and zero mean) over the masked entries."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: Tensor, values: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and returns; entries past each response must be 0."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages, advantages + values


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under `logits`, per position."""
    return torch.gather(logits.log_softmax(-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as generate() computes them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class PpoRun:
    """The state of one PPO run: models, optimizer, data order, progress."""

    def __init__(self, config: PpoConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.hp: PpoHyperparameters = config.hyperparameters
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.hp.seed)
        tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.reward_function = load_reward_function(config.reward)
        self.rows = task_dataset(config).to_list()

        resume = config.resume_from
        peft = lora_config(self.hp.lora)
        self.adapter = peft is not None
        base = AutoModelForCausalLM.from_pretrained(
            resume if resume is not None and peft is None else config.model_path
        )
        # transformers' and peft's own annotations do not compose well with mypy: kept as Any.
        self.reference: Any = None
        if peft is None:
            self.policy: Any = base
            self.reference = AutoModelForCausalLM.from_pretrained(config.model_path)
            self.reference.requires_grad_(False)
            self.reference.to(self.device).eval()
        elif resume is not None:
            from peft import PeftModel

            self.policy = PeftModel.from_pretrained(base, str(resume), is_trainable=True)
        else:
            from peft import get_peft_model

            self.policy = get_peft_model(base, peft)
        self.policy.to(self.device).eval()
        self.value_head = ValueHead(int(base.config.hidden_size)).to(self.device)
        self.eos_ids = self._eos_ids(base)

        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        trainable += list(self.value_head.parameters())
        self.parameters = trainable
        self.optimizer = torch.optim.AdamW(
            trainable, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        self.rollout_batch = (
            self.hp.per_device_train_batch_size
            * self.hp.gradient_accumulation_steps
            * self.hp.num_mini_batches
        )
        if len(self.rows) < self.rollout_batch:
            raise ValueError(
                f"the dataset has {len(self.rows)} prompts; "
                f"one PPO batch needs {self.rollout_batch}"
            )
        self.batches_per_epoch = len(self.rows) // self.rollout_batch
        self.max_steps = (
            self.hp.max_steps
            if self.hp.max_steps > 0
            else math.ceil(self.hp.num_train_epochs * self.batches_per_epoch)
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            self.hp.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=self.hp.warmup_steps,
            num_training_steps=self.max_steps,
        )
        self.global_step = 0
        if resume is not None:
            self._load_state(resume)
        self.writer = ProgressWriter(config.metrics_path)
        self.heartbeat = config.output_dir / "heartbeat"
        self.checkpoints = config.output_dir / "checkpoints"

    @staticmethod
    def _eos_ids(model: PreTrainedModel) -> list[int]:
        configured = model.generation_config.eos_token_id
        if configured is None:
            configured = model.config.eos_token_id
        if configured is None:
            raise ValueError("the model names no end-of-sequence token to stop generation")
        return [configured] if isinstance(configured, int) else list(configured)

    # --- data -----------------------------------------------------------------------------

    def batch_rows(self, step: int) -> list[dict[str, Any]]:
        """The prompts of global step `step` (0-based): a fixed order, so a resume continues it."""
        epoch, index = divmod(step, self.batches_per_epoch)
        generator = torch.Generator().manual_seed(self.hp.seed + epoch)
        order = torch.randperm(len(self.rows), generator=generator).tolist()
        chosen = order[index * self.rollout_batch : (index + 1) * self.rollout_batch]
        return [self.rows[i] for i in chosen]

    def _prompt_ids(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=False
            )
            if self.tokenizer.chat_template is not None
            else "".join(str(m["content"]) for m in row["prompt"])
            for row in rows
        ]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in encoded.items() if k != "token_type_ids"}

    # --- model passes ---------------------------------------------------------------------

    def _adapter_off(self) -> AbstractContextManager[Any]:
        return cast("AbstractContextManager[Any]", self.policy.disable_adapter())

    def forward(
        self, model: Any, input_ids: Tensor, attention_mask: Tensor, prompt_length: int
    ) -> tuple[Tensor, Tensor]:
        """Response logits (temperature-scaled) and last hidden states of the response positions."""
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        # Position t predicts token t + 1: the response is predicted from prompt_length - 1 on.
        logits = outputs.logits[:, prompt_length - 1 : -1] / self.hp.temperature
        hidden = outputs.hidden_states[-1][:, prompt_length - 1 : -1]
        return logits, hidden

    @torch.no_grad()
    def rollout(self, rows: list[dict[str, Any]]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and evaluate one batch."""
        prompts = self._prompt_ids(rows)
        prompt_length = prompts["input_ids"].shape[1]
        sequences = self.policy.generate(
            **prompts,
            do_sample=True,
            temperature=self.hp.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.hp.max_completion_length,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        responses = sequences[:, prompt_length:]
        is_eos = torch.isin(responses, torch.tensor(self.eos_ids, device=self.device))
        # Everything after the first end-of-sequence token is padding that generate() added.
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        response_mask = (~after_eos).float()
        attention_mask = torch.cat([prompts["attention_mask"], response_mask.long()], dim=1)

        texts = self.tokenizer.batch_decode(
            responses.masked_fill(after_eos, int(self.tokenizer.pad_token_id or 0)),
            skip_special_tokens=True,
        )
        scores = torch.tensor(
            [
                score(
                    self.reward_function,
                    data_source=row["data_source"],
                    solution_str=text,
                    ground_truth=row["reward_model"]["ground_truth"],
                    extra_info=row.get("extra_info"),
                )
                for row, text in zip(rows, texts, strict=True)
            ],
            device=self.device,
        )

        logits, hidden = self.forward(self.policy, sequences, attention_mask, prompt_length)
        logprobs = token_logprobs(logits, responses)
        values = self.value_head(hidden) * response_mask
        if self.reference is not None:
            ref_logits, _ = self.forward(self.reference, sequences, attention_mask, prompt_length)
        else:
            with self._adapter_off():
                ref_logits, _ = self.forward(self.policy, sequences, attention_mask, prompt_length)
        ref_logprobs = token_logprobs(ref_logits, responses)

        kl = kl_estimate(logprobs, ref_logprobs, self.hp.kl_estimator) * response_mask
        rewards = -self.hp.kl_coef * kl
        last = response_mask.sum(-1).long() - 1
        rewards[torch.arange(len(rows), device=self.device), last] += scores
        if self.hp.whiten_rewards:
            rewards = masked_whiten(rewards, response_mask, shift_mean=False) * response_mask
        advantages, returns = gae(rewards, values, gamma=self.hp.gamma, lam=self.hp.lam)
        advantages = masked_whiten(advantages, response_mask) * response_mask

        lengths = response_mask.sum(-1)
        stats = {
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(rows) > 1 else 0.0,
            f"rewards/{self.config.reward.function}/mean": scores.mean().item(),
            "ppo/kl": kl.sum(-1).mean().item(),
            "ppo/returns/mean": masked_mean(returns, response_mask).item(),
            "ppo/values/mean": masked_mean(values, response_mask).item(),
            "completions/mean_length": lengths.mean().item(),
        }
        batch = Rollout(
            input_ids=sequences,
            attention_mask=attention_mask,
            response_mask=response_mask,
            prompt_length=prompt_length,
            logprobs=logprobs,
            values=values,
            advantages=advantages,
            returns=returns,
            ref_logprobs=ref_logprobs,
        )
        return batch, stats

    def losses(self, batch: Rollout, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The PPO loss of the rows `index` of the batch, and its statistics."""
        mask = batch.response_mask[index]
        logits, hidden = self.forward(
            self.policy, batch.input_ids[index], batch.attention_mask[index], batch.prompt_length
        )
        responses = batch.input_ids[index, batch.prompt_length :]
        logprobs = token_logprobs(logits, responses)
        values = self.value_head(hidden)
        old_values, returns = batch.values[index], batch.returns[index]
        advantages, old_logprobs = batch.advantages[index], batch.logprobs[index]

        clipped_values = old_values + (values - old_values).clamp(
            -self.hp.cliprange_value, self.hp.cliprange_value
        )
        value_losses = torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
        value_loss = 0.5 * masked_mean(value_losses, mask)

        log_ratio = logprobs - old_logprobs
        ratio = log_ratio.exp()
        clipped_ratio = ratio.clamp(1.0 - self.hp.cliprange, 1.0 + self.hp.cliprange)
        policy_losses = torch.max(-advantages * ratio, -advantages * clipped_ratio)
        policy_loss = masked_mean(policy_losses, mask)
        loss = policy_loss + self.hp.vf_coef * value_loss
        kl_loss = None
        if self.hp.kl_loss_coef > 0:
            kl = kl_estimate(logprobs, batch.ref_logprobs[index], self.hp.kl_estimator)
            kl_loss = masked_mean(kl, mask)
            loss = loss + self.hp.kl_loss_coef * kl_loss

        with torch.no_grad():
            probabilities = logits.softmax(-1)
            entropy = torch.logsumexp(logits, -1) - (probabilities * logits).sum(-1)
            stats = {
                "loss": loss.detach(),
                "ppo/policy_loss": policy_loss.detach(),
                "ppo/value_loss": value_loss.detach(),
                "ppo/approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
                "ppo/clipfrac": masked_mean(
                    ((ratio - 1.0).abs() > self.hp.cliprange).float(), mask
                ),
                "ppo/value_clipfrac": masked_mean(
                    ((values - old_values).abs() > self.hp.cliprange_value).float(), mask
                ),
                "ppo/entropy": masked_mean(entropy, mask),
            }
            if kl_loss is not None:
                stats["ppo/kl_loss"] = kl_loss.detach()
        return loss, stats

    def update(self, batch: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes over the batch; one optimizer step per mini-batch."""
        size = batch.input_ids.shape[0]
        micro = self.hp.per_device_train_batch_size
        mini = size // self.hp.num_mini_batches
        sums: dict[str, float] = defaultdict(float)
        count = skipped = 0
        grad_norm = 0.0
        for _ in range(self.hp.ppo_epochs):
            order = torch.randperm(size, device=self.device)
            for start in range(0, size, mini):
                for offset in range(start, start + mini, micro):
                    index = order[offset : offset + micro]
                    loss, stats = self.losses(batch, index)
                    torch.autograd.backward(loss * len(index) / mini)
                    for key, value in stats.items():
                        sums[key] += value.item()
                    count += 1
                norm = nn.utils.clip_grad_norm_(self.parameters, self.hp.max_grad_norm)
                grad_norm = float(norm)
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                else:
                    # A NaN or infinite gradient (a reward that returned NaN...) would turn
                    # every weight into NaN; the update is skipped, and the non-finite loss
                    # is still reported, so alert rules and users see it.
                    skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
        values = {key: total / count for key, total in sums.items()}
        values["grad_norm"] = grad_norm
        values["ppo/skipped_updates"] = float(skipped)
        return values

    # --- checkpoints ----------------------------------------------------------------------

    def _save_model(self, directory: Path) -> None:
        self.policy.config.use_cache = True
        self.policy.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def save_checkpoint(self) -> None:
        """Write checkpoints/checkpoint-N (model, value head, optimizer, RNG); rotate old ones."""
        from safetensors.torch import save_file

        directory = self.checkpoints / f"checkpoint-{self.global_step}"
        directory.mkdir(parents=True, exist_ok=True)
        self._save_model(directory)
        save_file(self.value_head.state_dict(), str(directory / VALUE_HEAD_FILE))
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
        torch.save(self.scheduler.state_dict(), directory / SCHEDULER_FILE)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, directory / RNG_FILE)
        state = {"algorithm": "ppo", "global_step": self.global_step, "max_steps": self.max_steps}
        (directory / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        path = directory.relative_to(self.config.output_dir).as_posix()
        self.writer.checkpoint(
            step=self.global_step,
            path=path,
            final=False,
            adapter=self.adapter,
            size_bytes=directory_size(directory),
        )
        print(f"checkpoint saved: {path}")
        self._rotate()

    def _rotate(self) -> None:
        limit = self.hp.save_total_limit
        if limit is None:
            return
        saved = sorted(
            (p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        for old in saved[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        self.global_step = int(state["global_step"])
        self.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE)))
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE))
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE))
        rng = torch.load(directory / RNG_FILE)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        print(f"resumed from {directory} at step {self.global_step}")

    # --- the loop -------------------------------------------------------------------------

    def _logged(self, pending: dict[str, list[float]]) -> dict[str, float | int | None]:
        values: dict[str, float | int | None] = {}
        for key, items in pending.items():
            values[key] = sum(items) / len(items)  # NaN stays NaN: the writer marks it
        values["learning_rate"] = self.scheduler.get_last_lr()[0]
        values["epoch"] = self.global_step / self.batches_per_epoch
        return values

    def train(self) -> None:
        """Run PPO to max_steps, then save the final model."""
        total = sum(p.numel() for p in self.policy.parameters())
        trainable = sum(p.numel() for p in self.parameters)
        print(f"model: {total} parameters, {trainable} trainable, device {self.device}")
        print(f"training started: {self.max_steps} steps")
        self.writer.started(max_steps=self.max_steps)
        self.heartbeat.touch()
        started = time.monotonic()
        first_step = self.global_step
        pending: dict[str, list[float]] = defaultdict(list)
        losses: list[float] = []
        for step in range(self.global_step, self.max_steps):
            batch, rollout_stats = self.rollout(self.batch_rows(step))
            update_stats = self.update(batch)
            self.scheduler.step()
            self.global_step = step + 1
            self.heartbeat.touch()
            losses.append(update_stats["loss"])
            for key, value in {**update_stats, **rollout_stats}.items():
                pending[key].append(value)
            if self.global_step % self.hp.logging_steps == 0:
                values = self._logged(pending)
                self.writer.metrics(step=self.global_step, values=values)
                print(console_line(self.global_step, self.max_steps, values))
                pending.clear()
            stop = self.global_step < self.max_steps and stop_requested(self.config.output_dir)
            if stop:
                print(f"stop requested: saving a checkpoint at step {self.global_step}")
            if (
                stop
                or self.global_step % self.hp.save_steps == 0
                or self.global_step == self.max_steps
            ):
                self.save_checkpoint()
            if stop:
                self.writer.stopped(step=self.global_step)
                raise StoppedOnRequest(self.global_step)
        runtime = time.monotonic() - started
        ran = self.global_step - first_step
        summary: dict[str, float | int | None] = {
            "train_runtime": runtime,
            "train_steps_per_second": ran / runtime if runtime > 0 else None,
            "train_loss": sum(losses) / len(losses) if losses else None,
        }
        self.writer.summary(step=self.global_step, values=summary)
        print("training finished: " + console_line(self.global_step, self.max_steps, summary))

        final = self.config.output_dir / "model"
        self._save_model(final)
        self.writer.checkpoint(
            step=self.global_step,
            path="model",
            final=True,
            adapter=self.adapter,
            size_bytes=directory_size(final),
        )
        print(f"saved final {'adapter' if self.adapter else 'model'} to {final}")


def train(config: PpoConfig) -> None:
    """Train with PPO as the config says; raises on failure."""
    PpoRun(config).train()
