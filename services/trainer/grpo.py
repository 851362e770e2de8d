"""GRPO's pieces under their original names (the policy tests import `token_logprobs` from here).

The math lives in advantages.py (group_advantages) and losses.py; `clipped_loss` is
the GRPO objective assembled from them: PPO-clip surrogate with per-sample
advantages plus kl_coef * k3, averaged over completion tokens.

The seed article's loss had no gradient path to the policy. Here the only
differentiable input is the policy's own recomputed logprobs; the engine's
logprobs (behaviour policy) and the reference's enter as constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.trainer.advantages import group_advantages
from services.trainer.losses import clipped_policy_loss, kl_estimate, token_logprobs

__all__ = ["LossParts", "clipped_loss", "group_advantages", "kl_k3", "token_logprobs"]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: unbiased and always >= 0."""
    return kl_estimate(logp, ref_logp, "k3")


@dataclass
class LossParts:
    loss: torch.Tensor
    policy_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float


def clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
    normalizer: float | None = None,
) -> LossParts:
    """PPO-clip surrogate + kl_coef * k3, averaged over the completion tokens in `mask`.

    logp, old_logp, ref_logp, mask: [batch, tokens]; advantages: [batch] (one per sample).
    `normalizer` replaces the mask's token count when micro-batches share one mean.
    """
    mask = mask.float()
    tokens = normalizer if normalizer is not None else mask.sum().clamp(min=1.0).item()
    terms = clipped_policy_loss(logp, old_logp, advantages, clip_eps)
    kl = kl_k3(logp, ref_logp.detach())
    loss = ((terms.loss + kl_coef * kl) * mask).sum() / tokens
    with torch.no_grad():
        count = mask.sum().clamp(min=1.0)
        return LossParts(
            loss=loss,
            policy_loss=float((terms.loss * mask).sum() / count),
            kl=float((kl * mask).sum() / count),
            clip_fraction=float((terms.clipped * mask).sum() / count),
            ratio_mean=float((terms.ratio * mask).sum() / count),
        )
