"""Running score statistics per model version, for callers who want whitened rewards.

Reward scales differ between models (a cosine in [-1, 1], a raw logit, a rules sum) and
drift between versions of one model, so RL trainers usually whiten rewards. Each loaded
version keeps Welford's running mean and variance of the raw scores it has returned,
which is numerically stable over millions of updates and needs O(1) memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MIN_STD = 1e-6


@dataclass(frozen=True)
class StatsSnapshot:
    count: int
    mean: float
    std: float
    min: float
    max: float


class RunningStats:
    """Welford's online mean/variance plus min/max. Not thread-safe: update from one thread."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, values: Iterable[float]) -> None:
        for value in values:
            if not math.isfinite(value):
                continue  # one NaN would poison every later whitened score
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (value - self.mean)
            self.min = min(self.min, value)
            self.max = max(self.max, value)

    @property
    def std(self) -> float:
        """Sample standard deviation; 0 until two scores have been seen."""
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0

    def snapshot(self) -> StatsSnapshot:
        if self.count == 0:
            return StatsSnapshot(0, 0.0, 0.0, 0.0, 0.0)
        return StatsSnapshot(self.count, self.mean, self.std, self.min, self.max)

    def whiten(self, values: Iterable[float]) -> list[float]:
        """(value - mean) / std; std counts as 1 until two scores were seen, and never below MIN_STD."""
        scale = max(self.std, MIN_STD) if self.count > 1 else 1.0
        return [(value - self.mean) / scale for value in values]
