"""Advantages for every algorithm, as token-level [batch, tokens] tensors.

All four start from the same token rewards: each sample's (processed) score on
its last completion token, minus the per-token KL penalty when the KL goes into
the reward. They differ in the baseline:

- grpo: (R - group mean) / group std, R the sequence's summed token reward.
- rloo: R - mean of the *other* samples of the prompt (leave-one-out; unbiased).
- reinforce_pp: REINFORCE++ (Hu 2025): token returns-to-go, whitened over the
  whole batch instead of per group.
- ppo: GAE (Schulman et al. 2016) on a learned critic's values, whitened over
  the batch; the returns are the critic's regression targets.
- ppg: ppo's advantages and returns in its policy phases (the auxiliary phase is
  services/trainer/ppg.py).

Columns follow `Rollout`: column j scores token j+1, and `mask` marks the
completion's columns (contiguous per row).
"""

from __future__ import annotations

import torch

ALGORITHMS = ("grpo", "rloo", "reinforce_pp", "ppo", "ppg")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); masked-out entries become 0."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - mean) / (std + eps) within each consecutive group of `group_size` samples.

    A group whose rewards are all equal carries no signal and gets zeros.
    """
    groups = _groups(rewards, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - mean) / (std + eps)).view(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): r_i - mean_{j != i} r_j, i.e. k/(k-1) * (r_i - group mean)."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    groups = _groups(rewards, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).view(-1)


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last completion token (rows must have at least one)."""
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, columns, torch.full_like(columns, -1)).max(dim=1).values


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl_penalty: torch.Tensor | None = None) -> torch.Tensor:
    """Score on each row's last completion token, minus `kl_penalty` (already scaled) on every token."""
    rewards = torch.zeros_like(mask, dtype=torch.float32)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] = scores.float()
    if kl_penalty is not None:
        rewards = rewards - kl_penalty * mask
    return rewards * mask


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, ending at each row's last completion token."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation; the state after the last token is terminal (value 0).

    Returns (advantages, returns) with returns = advantages + values (the critic's targets).
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_mask = mask[:, t + 1] if t + 1 < width else torch.zeros_like(mask[:, t])
        next_value = values[:, t + 1] * next_mask if t + 1 < width else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * next_mask * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def compute_advantages(
    algorithm: str,
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    kl_penalty: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-level advantages for `algorithm`, and the critic's returns (ppo and ppg, else None)."""
    mask = mask.float()
    rewards = token_rewards(scores, mask, kl_penalty)
    if algorithm in ("grpo", "rloo"):
        sequence = rewards.sum(dim=1)
        per_sample = (
            group_advantages(sequence, group_size) if algorithm == "grpo" else rloo_advantages(sequence, group_size)
        )
        return per_sample.unsqueeze(1) * mask, None
    if algorithm == "reinforce_pp":
        return whiten(returns_to_go(rewards, mask, gamma), mask), None
    if algorithm in ("ppo", "ppg"):
        if values is None:
            raise ValueError(f"{algorithm} needs the critic's values")
        advantages, returns = gae(rewards, values.float() * mask, mask, gamma, lam)
        return whiten(advantages, mask), returns
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
