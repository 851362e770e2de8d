"""Open-loop arrival process: inter-arrival gaps as in vLLM's `vllm bench serve`.

Gaps are gamma distributed with shape = burstiness and mean 1 / rate, so
burstiness 1 is a Poisson process, below 1 arrivals clump, above 1 they even
out, and infinity gives a constant gap. Open-loop arrivals do not wait for
earlier requests to finish: that is what exposes queueing past the knee.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def arrival_gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless seconds between successive arrivals at `rate` per second (inf: no gap)."""
    if not rate > 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        while True:
            yield 0.0
    if math.isinf(burstiness):
        while True:
            yield 1.0 / rate
    rng = np.random.default_rng(seed)
    scale = 1.0 / (rate * burstiness)
    while True:
        for gap in rng.gamma(shape=burstiness, scale=scale, size=256):
            yield float(gap)


def arrival_times(rate: float, burstiness: float, seed: int, count: int) -> list[float]:
    """The first `count` arrival offsets from the start (the first arrival also waits one gap)."""
    times, now = [], 0.0
    gaps = arrival_gaps(rate, burstiness, seed)
    for _ in range(count):
        now += next(gaps)
        times.append(now)
    return times
