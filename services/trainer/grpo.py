"""GRPO's math: group-normalized advantages, token logprobs, and the clipped loss with KL.

The seed article's loss had no gradient path to the policy. Here the only
differentiable input is the policy's own recomputed logprobs; the engine's
logprobs (behaviour policy) and the reference's enter as constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each consecutive group of `group_size` samples.

    A group whose rewards are all equal carries no signal and gets zeros.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size).float()
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - mean) / (std + eps)).view(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) gathered at `tokens`; logits[:, t] scores tokens[:, t]."""
    scaled = logits.float() / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: unbiased and always >= 0."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


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
    """PPO-clip surrogate + kl_coef * KL, averaged over the completion tokens in `mask`.

    logp, old_logp, ref_logp, mask: [batch, tokens]; advantages: [batch] (one per sample).
    `normalizer` replaces the mask's token count when micro-batches share one mean.
    """
    mask = mask.float()
    tokens = normalizer if normalizer is not None else mask.sum().clamp(min=1.0).item()
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach().unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    policy = -torch.minimum(unclipped, clipped)
    kl = kl_k3(logp, ref_logp.detach())
    loss = ((policy + kl_coef * kl) * mask).sum() / tokens
    with torch.no_grad():
        count = mask.sum().clamp(min=1.0)
        return LossParts(
            loss=loss,
            policy_loss=float((policy * mask).sum() / count),
            kl=float((kl * mask).sum() / count),
            clip_fraction=float((((ratio - 1.0).abs() > clip_eps).float() * mask).sum() / count),
            ratio_mean=float((ratio * mask).sum() / count),
        )
