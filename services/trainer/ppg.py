"""Phasic Policy Gradient (Cobbe, Hilton, Klimov, Schulman 2021, arXiv 2009.04416) for a language-model policy.

PPG alternates two phases. The *policy phase* is PPO with a separate critic: this
trainer's `ppo` path unchanged (clipped surrogate, GAE on the critic's values, the
critic regressed toward the returns). Every `policy_phases` steps an *auxiliary phase*
follows: for `aux_epochs` passes over the rollouts of those steps it trains a value
head on the *policy* network toward the returns the policy phases computed, so the
policy's features learn what the critic knows, while a behaviour-cloning term
beta_clone * KL(pi_before || pi_theta) over the whole vocabulary keeps the policy's
distribution where it was before the phase (pi_before: a frozen copy of the policy taken
when the phase starts and dropped when it ends, so the phase briefly holds one more
model in memory). The critic gets extra regression passes in the same phase.

With LoRA the auxiliary gradients flow into the adapters (which carry the policy) and
the value head; the head is a separate module, never part of the policy, so pushed
weights are exactly the policy's.

Hyper-parameters, against the authors' code (openai/phasic-policy-gradient, train.py:
n_pi=32, n_aux_epochs=6, beta_clone=1, aux_lr=lr, vf_true_weight=1) and why ours differ:

- policy_phases (N_pi) = 8, not 32. A Procgen policy phase is 64 envs x 256 steps
  (16k transitions); ours is one step of prompts_per_step x samples_per_prompt samples
  (16 by default), and RLHF runs are tens to hundreds of steps: at 32 an aux phase would
  come a handful of times per run. The paper's N_pi sweep loses little from 32 to 8.
- aux_epochs (E_aux) = 3, not 6. An aux phase costs E_aux passes (forward and backward)
  plus E_aux no-grad passes of the frozen copy over N_pi rollouts, against one pass per
  policy phase; 3 keeps training compute at about 4-5x plain PPO's, and the paper's E_aux
  sweep gains little beyond 3 compared with 1 -> 3.
- beta_clone = 1.0, as the paper: it found PPG insensitive to it in a wide range.
- aux_learning_rate = the policy's learning rate (0 means so), as the authors' aux_lr = lr.
- critic_in_aux = true: the authors' vf_true term (weight 1): the critic takes the same
  extra regression passes toward the same targets.

The buffer of the phase's rollouts (token ids, masks, returns, sampling temperature),
the value head, the auxiliary optimizer and the phase counters are all checkpointed,
so a resumed run replays an interrupted phase exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.common.config import option
from services.trainer.rollout import first_completion_column

HEAD_FILE = "ppg_value_head.safetensors"
BUFFER_FILE = "ppg_aux_buffer.safetensors"
OPTIMIZER_FILE = "ppg_aux_optimizer.pt"
STAT_KEYS = ("aux_phase", "aux_value_loss", "aux_clone_kl", "aux_critic_loss")


@dataclass(frozen=True)
class PPGSettings:
    """Phasic Policy Gradient (algorithm=ppg): when and how hard the auxiliary phase trains."""

    policy_phases: int = option(8, "N_pi: policy phases (steps) between auxiliary phases (>= 1).")
    aux_epochs: int = option(3, "E_aux: passes over the buffered rollouts per auxiliary phase (>= 1).")
    beta_clone: float = option(1.0, "Weight of the behaviour-cloning KL(pi_before || pi) in the auxiliary loss (>= 0).")
    aux_learning_rate: float = option(
        0.0, "AdamW learning rate of the auxiliary phase (0: the policy's learning rate)."
    )
    critic_in_aux: bool = option(True, "Also regress the separate critic toward the returns in the auxiliary phase.")

    def __post_init__(self) -> None:
        if self.policy_phases < 1 or self.aux_epochs < 1:
            raise ValueError(
                f"ppg.policy_phases and ppg.aux_epochs must be >= 1, got {self.policy_phases}, {self.aux_epochs}"
            )
        if self.beta_clone < 0 or self.aux_learning_rate < 0:
            raise ValueError(
                "ppg.beta_clone and ppg.aux_learning_rate must be >= 0, "
                f"got {self.beta_clone}, {self.aux_learning_rate}"
            )


def aux_token_losses(
    aux_values: torch.Tensor,
    returns: torch.Tensor,
    old_logits: torch.Tensor,
    new_logits: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: 0.5 (V_aux - R)^2 and KL(softmax(old/T) || softmax(new/T)) over the vocabulary.

    old_logits are constants (the policy before the phase); new_logits and aux_values carry the gradient.
    """
    value_loss = 0.5 * (aux_values.float() - returns.detach().float()) ** 2
    old = torch.log_softmax(old_logits.detach().float() / temperature, dim=-1)
    new = torch.log_softmax(new_logits.float() / temperature, dim=-1)
    clone_kl = (old.exp() * (old - new)).sum(dim=-1)
    return value_loss, clone_kl


@dataclass
class AuxEntry:
    """One policy phase's rollout as the auxiliary phase needs it (CPU tensors)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    returns: torch.Tensor
    temperature: float


class PhasicAuxiliary:
    """The auxiliary phase's state and loop; the Learner owns one when algorithm=ppg.

    `learner` provides policy, trainable, critic, critic_optimizer, config and device.
    """

    def __init__(self, learner, settings: PPGSettings) -> None:
        self.learner, self.settings = learner, settings
        optimizer = learner.config.optimizer
        self.head = torch.nn.Linear(int(learner.policy.config.hidden_size), 1).to(learner.device)
        torch.nn.init.zeros_(self.head.weight)  # V_aux = 0 at first, as the critic
        torch.nn.init.zeros_(self.head.bias)
        lr = settings.aux_learning_rate or optimizer.learning_rate
        self.params = [*learner.trainable, *self.head.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=optimizer.weight_decay)
        self.buffer: list[AuxEntry] = []
        self.phases = 0  # auxiliary phases completed

    # ---- the phase -------------------------------------------------------------

    def after_policy_phase(self, input_ids, attention_mask, mask, returns, temperature: float) -> dict[str, float]:
        """Buffers the step's rollout; runs the auxiliary phase when N_pi have gathered. Returns STAT_KEYS."""
        # the buffer's own copies: the caller's tensors may be reused or share memory
        own = [t.detach().to("cpu", copy=True) for t in (input_ids, attention_mask, mask, returns)]
        self.buffer.append(AuxEntry(own[0], own[1], own[2].float(), own[3].float(), temperature))
        if len(self.buffer) < self.settings.policy_phases:
            return {key: 0.0 for key in STAT_KEYS}
        stats = self.run()
        self.buffer.clear()
        self.phases += 1
        return {"aux_phase": float(self.phases), **stats}

    def run(self) -> dict[str, float]:
        """E_aux epochs over the buffer, one optimizer step per buffered rollout; the last epoch's means."""
        policy = self.learner.policy
        before = copy.deepcopy(policy).eval().requires_grad_(False)
        last: dict[str, float] = {}
        try:
            for _ in range(self.settings.aux_epochs):
                sums = {"aux_value_loss": 0.0, "aux_clone_kl": 0.0, "aux_critic_loss": 0.0}
                for entry in self.buffer:
                    self._policy_step(before, entry, sums)
                    if self.settings.critic_in_aux and self.learner.critic is not None:
                        self._critic_step(entry, sums)
                last = {key: value / len(self.buffer) for key, value in sums.items()}
        finally:
            del before
            self.optimizer.zero_grad(set_to_none=True)
        return last

    def _micro_batches(self, entry: AuxEntry):
        size, device = self.learner.config.optimizer.micro_batch_size, self.learner.device
        for start in range(0, entry.input_ids.shape[0], size):
            part = slice(start, start + size)
            yield (
                entry.input_ids[part].to(device),
                entry.attention_mask[part].to(device),
                entry.mask[part].to(device),
                entry.returns[part].to(device),
            )

    def _policy_step(self, before: torch.nn.Module, entry: AuxEntry, sums: dict[str, float]) -> None:
        total = float(entry.mask.sum().clamp(min=1.0))
        beta = self.settings.beta_clone
        self.optimizer.zero_grad(set_to_none=True)
        for ids, attn, mask, returns in self._micro_batches(entry):
            first = first_completion_column(mask)
            keep = ids.shape[1] - first
            out = self.learner.policy(
                input_ids=ids, attention_mask=attn, logits_to_keep=keep, output_hidden_states=True
            )
            values = self.head(out.hidden_states[-1][:, first:-1]).squeeze(-1)
            with torch.no_grad():
                old_logits = before(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits[:, :-1]
            value_loss, clone_kl = aux_token_losses(
                values, returns[:, first:], old_logits, out.logits[:, :-1], entry.temperature
            )
            m = mask[:, first:]
            loss = ((value_loss + beta * clone_kl) * m).sum() / total
            loss.backward()
            sums["aux_value_loss"] += float((value_loss.detach() * m).sum()) / total
            sums["aux_clone_kl"] += float((clone_kl.detach() * m).sum()) / total
        if self.learner.config.optimizer.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.learner.config.optimizer.max_grad_norm)
        self.optimizer.step()

    def _critic_step(self, entry: AuxEntry, sums: dict[str, float]) -> None:
        critic, optimizer = self.learner.critic, self.learner.critic_optimizer
        total = float(entry.mask.sum().clamp(min=1.0))
        optimizer.zero_grad(set_to_none=True)
        for ids, attn, mask, returns in self._micro_batches(entry):
            loss = ((0.5 * (critic(ids, attn) - returns) ** 2) * mask).sum() / total
            loss.backward()
            sums["aux_critic_loss"] += float(loss.detach())
        if self.learner.config.optimizer.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(critic.parameters(), self.learner.config.optimizer.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ---- checkpoints -----------------------------------------------------------

    def save(self, directory: Path) -> None:
        save_file(
            {name: t.detach().contiguous() for name, t in self.head.state_dict().items()}, str(directory / HEAD_FILE)
        )
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
        tensors = {"phases": torch.tensor([self.phases], dtype=torch.int64)}
        for index, entry in enumerate(self.buffer):
            tensors |= {
                f"{index}.input_ids": entry.input_ids.contiguous(),
                f"{index}.attention_mask": entry.attention_mask.contiguous(),
                f"{index}.mask": entry.mask.contiguous(),
                f"{index}.returns": entry.returns.contiguous(),
                f"{index}.temperature": torch.tensor([entry.temperature], dtype=torch.float64),
            }
        save_file(tensors, str(directory / BUFFER_FILE))

    def load(self, directory: Path) -> None:
        if not (directory / BUFFER_FILE).is_file():
            raise FileNotFoundError(f"{directory} has no {BUFFER_FILE}: it was not written by a ppg run")
        self.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
        tensors = load_file(str(directory / BUFFER_FILE))
        self.phases = int(tensors.pop("phases")[0])
        count = len(tensors) // 5
        self.buffer = [
            AuxEntry(
                tensors[f"{i}.input_ids"],
                tensors[f"{i}.attention_mask"],
                tensors[f"{i}.mask"],
                tensors[f"{i}.returns"],
                float(tensors[f"{i}.temperature"][0]),
            )
            for i in range(count)
        ]
