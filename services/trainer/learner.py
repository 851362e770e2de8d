"""The trainable side: policy (full or LoRA), frozen reference, optional critic, their
optimizers and schedulers, and one update over a rollout.

An update is two passes over micro-batches. `prepare` (no gradients) computes what
the loss treats as constants: the reference's logprobs, the critic's values and,
when a rollout is reused for several epochs, the proximal policy's logprobs.
`update` then runs `ppo_epochs` optimizer steps, each accumulating gradients over
all micro-batches so memory stays bounded by `micro_batch_size`. With one epoch the
proximal logprobs are the forward pass's own values (detached): same weights, so
no extra pass.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.trainer import lora
from services.trainer.config import TrainerConfig
from services.trainer.critic import ValueModel
from services.trainer.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    importance_weights,
    kl_estimate,
    logprobs_and_entropy,
)
from services.trainer.ppg import PhasicAuxiliary
from services.trainer.rollout import Rollout, completion_logits, first_completion_column, pad_columns, sequence_logprobs

ADAPTER_FILE = "adapter.safetensors"


STAT_KEYS = (
    "loss",
    "policy_loss",
    "value_loss",
    "kl",
    "kl_k1",
    "kl_k3",
    "entropy",
    "clip_fraction",
    "ratio_mean",
    "is_weight_mean",
    "is_truncated",
    "logprob_abs_diff",
    "grad_norm",
)


@dataclass(frozen=True)
class _MicroBatch:
    ids: torch.Tensor
    attn: torch.Tensor
    first: int  # first completion column (logits are only computed from here)
    mask: torch.Tensor
    total: float  # completion tokens of the whole rollout: every micro-batch's loss shares one mean


@dataclass
class Prepared:
    ref_logp: torch.Tensor
    old_logp: torch.Tensor | None
    values: torch.Tensor | None


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier on the base learning rate per optimizer step: linear warmup, then constant or cosine to 10%."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


class Learner:
    ppg: PhasicAuxiliary | None = None  # algorithm=ppg only (never under torchrun)

    def __init__(self, config: TrainerConfig, model_dir: str, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM

        self.config, self.device = config, device
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        if config.lora.rank > 0:
            policy = lora.apply_lora(
                policy, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.targets
            )
            self.reference = None  # the adapter-free base is the reference
        else:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.policy = policy.train()
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay
        )
        factor = lr_lambda(config.optimizer.lr_schedule, config.optimizer.warmup_steps, config.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.critic = self.critic_optimizer = self.critic_scheduler = None
        if config.objective.algorithm in ("ppo", "ppg"):
            self.critic = ValueModel.from_pretrained(config.objective.critic_model or model_dir).to(device).train()
            self.critic_optimizer = torch.optim.AdamW(
                self.critic.parameters(),
                lr=config.objective.critic_learning_rate,
                weight_decay=config.optimizer.weight_decay,
            )
            self.critic_scheduler = torch.optim.lr_scheduler.LambdaLR(self.critic_optimizer, factor)
        # ppg: the auxiliary phase (value head on the policy, its optimizer, the rollout buffer)
        self.ppg = PhasicAuxiliary(self, config.ppg) if config.objective.algorithm == "ppg" else None

    # ---- forward passes ------------------------------------------------------

    def _micro_batches(self, rollout: Rollout):
        """(rows, input ids, attention mask, first completion column) per micro-batch."""
        size = self.config.optimizer.micro_batch_size
        for start in range(0, len(rollout), size):
            part = slice(start, start + size)
            first = first_completion_column(rollout.mask[part])
            yield part, rollout.input_ids[part].to(self.device), rollout.attention_mask[part].to(self.device), first

    def reference_logprobs(
        self, ids: torch.Tensor, attn: torch.Tensor, first_column: int = 0, temperature: float | None = None
    ) -> torch.Tensor:
        temperature = temperature or self.config.sampling.temperature
        if self.reference is not None:
            return sequence_logprobs(self.reference, ids, attn, temperature, first_column)
        with self.policy.disable_adapter():
            return sequence_logprobs(self.policy, ids, attn, temperature, first_column)

    def temperature(self, rollout: Rollout) -> float:
        """The temperature that sampled the rollout (a schedule's value), else the configured one."""
        return getattr(rollout, "temperature", None) or self.config.sampling.temperature

    @torch.no_grad()
    def prepare(self, rollout: Rollout) -> Prepared:
        c = self.config
        temperature = self.temperature(rollout)
        ref, old, values = [], [], []
        for _, ids, attn, first in self._micro_batches(rollout):
            ref.append(self.reference_logprobs(ids, attn, first, temperature).cpu())
            if c.objective.ppo_epochs > 1 and c.objective.tis_cap > 0:
                old.append(sequence_logprobs(self.policy, ids, attn, temperature, first).cpu())
            if self.critic is not None:
                values.append(self.critic(ids, attn).cpu())
        return Prepared(torch.cat(ref), torch.cat(old) if old else None, torch.cat(values) if values else None)

    # ---- the update --------------------------------------------------------------

    def update(
        self,
        rollout: Rollout,
        prepared: Prepared,
        advantages: torch.Tensor,
        returns: torch.Tensor | None,
        kl_coef: float,
        total_tokens: float | None = None,
    ) -> dict:
        """`ppo_epochs` optimizer steps on the rollout; returns token-weighted means of the first epoch.

        `total_tokens`: the denominator of every mean when `rollout` is one rank's slice of a
        larger batch (default: this rollout's completion tokens).
        """
        total = total_tokens if total_tokens is not None else float(rollout.mask.sum().clamp(min=1.0))
        temperature = self.temperature(rollout)
        epochs: list[dict[str, float]] = []
        for _ in range(self.config.objective.ppo_epochs):
            sums: dict[str, float] = defaultdict(float)
            self.optimizer.zero_grad(set_to_none=True)
            if self.critic_optimizer is not None:
                self.critic_optimizer.zero_grad(set_to_none=True)
            for part, ids, attn, first in self._micro_batches(rollout):
                batch = _MicroBatch(ids, attn, first, rollout.mask[part].to(self.device), total)
                self._policy_backward(
                    batch, rollout.behaviour_logp[part], prepared, part, advantages[part], kl_coef, sums, temperature
                )
                if self.critic is not None:
                    self._critic_backward(batch, prepared.values[part], returns[part], sums)
            sums["grad_norm"] = self._optimizer_step()
            epochs.append(sums)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if self.critic_scheduler is not None:
            self.critic_scheduler.step()
        # What the rollout looked like to the weights that sampled it (epoch 1); clipping
        # only happens from epoch 2 on, so it is averaged over every epoch.
        stats = {key: 0.0 for key in STAT_KEYS} | dict(epochs[0]) | {"lr": lr}
        for key in ("clip_fraction", "ratio_mean"):
            stats[key] = sum(e[key] for e in epochs) / len(epochs)
        if self.ppg is not None:  # buffers the rollout; every ppg.policy_phases updates, the auxiliary phase
            stats |= self.ppg.after_policy_phase(
                rollout.input_ids, rollout.attention_mask, rollout.mask, returns, temperature
            )
        return stats

    def _policy_backward(
        self,
        batch: _MicroBatch,
        behaviour: torch.Tensor,
        prepared: Prepared,
        part: slice,
        advantages: torch.Tensor,
        kl_coef: float,
        sums: dict[str, float],
        temperature: float,
    ) -> None:
        c, mask, first = self.config, batch.mask, batch.first
        behaviour = behaviour.to(self.device)
        ref = prepared.ref_logp[part].to(self.device)
        logits = completion_logits(self.policy, batch.ids, batch.attn, first)
        logp, entropy = (
            pad_columns(x, first) for x in logprobs_and_entropy(logits, batch.ids[:, first + 1 :], temperature)
        )
        if c.objective.tis_cap > 0:
            old = prepared.old_logp[part].to(self.device) if prepared.old_logp is not None else logp.detach()
            weights = importance_weights(old, behaviour, c.objective.tis_cap)
        else:  # the engine's logprobs are the PPO ratio's denominator; no correction
            old, weights = behaviour, None
        terms = clipped_policy_loss(logp, old, advantages.to(self.device), c.objective.clip_eps, weights)
        kl = kl_estimate(logp, ref, c.objective.kl_estimator)
        token_loss = terms.loss
        if c.objective.kl_placement == "loss":
            token_loss = token_loss + kl_coef * kl
        if c.objective.entropy_coef > 0:
            token_loss = token_loss - c.objective.entropy_coef * entropy
        loss = (token_loss * mask).sum() / batch.total
        loss.backward()
        sums["loss"] += float(loss.detach())
        with torch.no_grad():
            log_ratio = logp.detach() - ref
            if weights is None:
                weights = torch.ones_like(mask)
            parts = {
                "policy_loss": terms.loss.detach(),
                "kl": kl.detach(),
                "kl_k1": log_ratio,
                "kl_k3": torch.exp(-log_ratio) + log_ratio - 1.0,
                "entropy": entropy.detach(),
                "clip_fraction": terms.clipped,
                "ratio_mean": terms.ratio,
                "is_weight_mean": weights,
                "is_truncated": (weights >= c.objective.tis_cap).float()
                if c.objective.tis_cap > 0
                else torch.zeros_like(mask),
                "logprob_abs_diff": (logp.detach() - behaviour).abs(),
            }
            for key, value in parts.items():
                sums[key] += float((value * mask).sum()) / batch.total

    def _critic_backward(
        self, batch: _MicroBatch, old_values: torch.Tensor, returns: torch.Tensor, sums: dict[str, float]
    ) -> None:
        values = self.critic(batch.ids, batch.attn)
        loss = clipped_value_loss(
            values, old_values.to(self.device), returns.to(self.device), self.config.objective.value_clip_eps
        )
        loss = (loss * batch.mask).sum() / batch.total
        loss.backward()
        sums["value_loss"] += float(loss.detach())

    def _optimizer_step(self) -> float:
        """Clips, steps policy (and critic); returns the policy's gradient norm before clipping."""
        grad_norm = 0.0
        if self.config.optimizer.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.optimizer.max_grad_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor when sharded
            if self.critic is not None:
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.optimizer.max_grad_norm)
        self.optimizer.step()
        if self.critic_optimizer is not None:
            self.critic_optimizer.step()
        return grad_norm

    def close(self) -> None:
        """Nothing to release in one process (the sharded learner leaves its process group)."""

    # ---- weights out, checkpoints ------------------------------------------------

    def push_tensors(
        self, names: set[str] | None = None, dtype: torch.dtype = torch.float32
    ) -> list[tuple[str, torch.Tensor]]:
        """Checkpoint-named tensors to push (every one, or only `names`), merged and cast."""
        return [
            (name, t.to("cpu", dtype)) for name, t in lora.merged_tensors(self.policy) if names is None or name in names
        ]

    def save(self, directory: Path) -> None:
        if lora.is_lora(self.policy):
            save_file(lora.adapter_state(self.policy), str(directory / ADAPTER_FILE))
        else:
            self.policy.save_pretrained(directory, safe_serialization=True)
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        if self.critic is not None:
            self.critic.save(directory)
            torch.save(self.critic_optimizer.state_dict(), directory / "critic_optimizer.pt")
            torch.save(self.critic_scheduler.state_dict(), directory / "critic_scheduler.pt")
        if self.ppg is not None:
            self.ppg.save(directory)

    def load(self, directory: Path) -> None:
        if lora.is_lora(self.policy):
            if not (directory / ADAPTER_FILE).is_file():
                raise FileNotFoundError(f"{directory} has no {ADAPTER_FILE}: it was not written by a LoRA run")
            lora.load_adapter_state(self.policy, load_file(str(directory / ADAPTER_FILE)))
        else:
            self._load_full_policy(directory)
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        if self.critic is not None:
            self.critic.load(directory)
            self.critic_optimizer.load_state_dict(torch.load(directory / "critic_optimizer.pt", weights_only=True))
            self.critic_scheduler.load_state_dict(torch.load(directory / "critic_scheduler.pt", weights_only=True))
        if self.ppg is not None:
            self.ppg.load(directory)

    def _load_full_policy(self, directory: Path) -> None:
        files = sorted(p for p in directory.glob("model*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"{directory} has no model*.safetensors: it was not written by a full fine-tuning run"
            )
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_file(str(path)))
        result = self.policy.load_state_dict(state, strict=False)
        tied = (
            set(self.policy.state_dict())
            - {name for name, _ in self.policy.named_parameters()}
            - {name for name, _ in self.policy.named_buffers()}
        )
        missing = sorted(set(result.missing_keys) - tied)
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
