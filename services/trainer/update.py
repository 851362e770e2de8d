"""One policy update from a scored rollout: the part of the trainer's step after sampling.

Both the trainer loop and the online loop call it, so every setting of the trainer's
sections (`objective`: algorithm, KL placement and controller, TIS, clipping, epochs;
`rewards`: combine, normalize, clip; `lora` and `optimizer` through the learner) acts
the same in both programs. It is split in two so the trainer can plan (reference
logprobs, advantages) before it takes the lock that keeps catch-up pushes from reading
half-updated weights, and apply inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.trainer.advantages import compute_advantages
from services.trainer.config import TrainerConfig
from services.trainer.kl_control import KLController
from services.trainer.learner import Learner, Prepared
from services.trainer.losses import kl_estimate
from services.trainer.rewards import RewardProcessor
from services.trainer.rollout import Rollout


@dataclass(frozen=True)
class PlannedUpdate:
    """What an update trains on: the rollout, its rewards and advantages, and the KL coefficient now."""

    rollout: Rollout
    rewards: torch.Tensor
    prepared: Prepared
    advantages: torch.Tensor
    returns: torch.Tensor | None
    kl_coef: float


class PolicyUpdate:
    """Rewards -> KL penalty -> advantages of the configured algorithm -> learner update -> KL controller."""

    def __init__(self, config: TrainerConfig, learner: Learner) -> None:
        objective, rewards = config.objective, config.rewards
        self.config, self.learner = config, learner
        self.kl = KLController(objective.kl_coef, objective.kl_target, objective.kl_horizon)
        self.rewards = RewardProcessor(
            rewards.names, rewards.combine, rewards.uncertainty_k, rewards.normalize, rewards.clip
        )

    def plan(self, rollout: Rollout, scores: dict[str, torch.Tensor]) -> PlannedUpdate:
        """Scores ({reward model: one score per sample}) -> rewards, reference logprobs, advantages."""
        o = self.config.objective
        rewards = self.rewards(scores)
        prepared = self.learner.prepare(rollout)
        penalty = None
        if o.kl_placement == "reward":  # judged on the sampled tokens, under the policy that sampled them
            penalty = (
                self.kl.value * kl_estimate(rollout.behaviour_logp, prepared.ref_logp, o.kl_estimator) * rollout.mask
            )
        advantages, returns = compute_advantages(
            o.algorithm,
            rewards,
            rollout.mask,
            self.config.sampling.samples_per_prompt,
            penalty,
            prepared.values,
            o.gamma,
            o.gae_lambda,
        )
        return PlannedUpdate(rollout, rewards, prepared, advantages, returns, self.kl.value)

    def apply(self, plan: PlannedUpdate) -> dict:
        """The optimizer steps; returns the learner's statistics. Moves the adaptive KL coefficient."""
        stats = self.learner.update(plan.rollout, plan.prepared, plan.advantages, plan.returns, plan.kl_coef)
        self.kl.update(stats["kl"], len(plan.rollout))
        return stats

    def state_dict(self) -> dict:
        return {"kl_controller": self.kl.state_dict(), "reward_normalizer": self.rewards.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl_controller"])
        self.rewards.load_state_dict(state["reward_normalizer"])
