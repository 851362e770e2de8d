"""From raw reward-model scores to the one reward per sample the advantages use.

Per model: optional standardization (this batch's statistics, or running ones over
every score seen so far, so models on different scales weigh alike). Across models
(an ensemble, one Score call per model): mean, min (worst case) or mean - k*std
(uncertainty-weighted), which Coste et al. 2023 (arXiv 2310.02743) found to nearly
remove reward over-optimization. Then optional clipping to [-c, c].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COMBINES = ("mean", "min", "mean_minus_std")
NORMALIZERS = ("none", "batch", "running")


@dataclass
class RunningMoments:
    """Mean and variance over every value seen (Chan et al.'s parallel Welford update)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        n = values.numel()
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0


def combine(scores: torch.Tensor, how: str, k: float = 1.0) -> torch.Tensor:
    """scores: [models, samples] -> [samples]."""
    if how == "mean":
        return scores.mean(dim=0)
    if how == "min":
        return scores.min(dim=0).values
    if how == "mean_minus_std":
        return scores.mean(dim=0) - k * scores.std(dim=0, unbiased=False)
    raise ValueError(f"unknown reward combine {how!r}; choose one of {COMBINES}")


class RewardProcessor:
    def __init__(
        self, models: tuple[str, ...], how: str = "mean", k: float = 1.0, normalize: str = "none", clip: float = 0.0
    ) -> None:
        if not models:
            raise ValueError("at least one reward model is needed")
        if how not in COMBINES:
            raise ValueError(f"unknown reward combine {how!r}; choose one of {COMBINES}")
        if normalize not in NORMALIZERS:
            raise ValueError(f"unknown reward normalization {normalize!r}; choose one of {NORMALIZERS}")
        if clip < 0:
            raise ValueError("reward clip must be >= 0 (0 disables it)")
        self.models, self.how, self.k, self.normalize, self.clip = models, how, k, normalize, clip
        self.moments = {name: RunningMoments() for name in models}

    def _standardize(self, name: str, values: torch.Tensor) -> torch.Tensor:
        if self.normalize == "batch":
            return (values - values.mean()) / (values.std(unbiased=False) + 1e-6)
        if self.normalize == "running":
            moments = self.moments[name]
            moments.update(values)
            return (values - moments.mean) / (moments.std + 1e-6)
        return values

    def __call__(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """One reward per sample from {model name: scores}; updates running statistics."""
        missing = [name for name in self.models if name not in scores]
        if missing:
            raise ValueError(f"scores missing for reward models {missing}")
        stacked = torch.stack([self._standardize(name, scores[name].float()) for name in self.models])
        reward = combine(stacked, self.how, self.k)
        if self.clip > 0:
            reward = reward.clamp(-self.clip, self.clip)
        return reward

    def state_dict(self) -> dict:
        return {name: vars(m).copy() for name, m in self.moments.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, values in state.items():
            if name in self.moments:
                self.moments[name] = RunningMoments(int(values["count"]), float(values["mean"]), float(values["m2"]))
