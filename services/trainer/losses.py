"""Per-token loss terms: clipped policy surrogate with truncated importance sampling, clipped
value loss, KL estimators and entropy.

Three distributions meet here. The *behaviour* policy mu produced the samples
(the engine's returned logprobs, possibly from older weights in async mode, and
always with small numeric differences from the trainer). The *proximal* policy
pi_old is the trainer's weights when the rollout entered the update. pi_theta is
being optimized. The PPO ratio is pi_theta / pi_old; the truncated importance
weight min(pi_old / mu, cap) (Yao et al. 2025, "off-policy RL training"; the
decoupled objective of AReaL) corrects for mu != pi_old without letting a
single stale token dominate. Every function returns per-token tensors; the
caller masks and normalizes them once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k3")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) gathered at `tokens`; logits[:, t] scores tokens[:, t]."""
    scaled = logits.float() / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(logits / T) at every position (nats)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs and token_entropy from one log-softmax (the vocabulary-wide pass is the costly part)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(dim=-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman, "Approximating KL").

    k1 = log pi - log ref: unbiased, can be negative per token.
    k3 = ref/pi - 1 - log(ref/pi): unbiased, always >= 0, lower variance.
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = ref_logp - logp
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def importance_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / mu, cap) per token, as a constant (truncated importance sampling)."""
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap).detach()


@dataclass
class PolicyTerms:
    """Per-token policy loss and what to log about it."""

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    weights: torch.Tensor | None = None,
) -> PolicyTerms:
    """-min(r A, clip(r, 1-eps, 1+eps) A) per token, times the importance `weights` if given.

    logp carries the gradient; old_logp, advantages and weights are constants.
    advantages are token-level ([B, T]) or per sample ([B], broadcast over tokens).
    """
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = -torch.minimum(unclipped, clipped)
    if weights is not None:
        loss = loss * weights.detach()
    with torch.no_grad():
        was_clipped = (clipped < unclipped).float()
    return PolicyTerms(loss, ratio.detach(), was_clipped)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) per token (PPO2's value clip)."""
    old_values, returns = old_values.detach(), returns.detach()
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
