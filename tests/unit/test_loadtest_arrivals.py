"""The open-loop arrival process: seeded gamma gaps with vLLM's rate and burstiness semantics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.common.arrivals import arrival_gaps, arrival_times


def _take(rate: float, burstiness: float, seed: int, n: int) -> np.ndarray:
    return np.fromiter(itertools.islice(arrival_gaps(rate, burstiness, seed), n), dtype=float)


def test_same_seed_same_arrivals() -> None:
    assert np.array_equal(_take(5.0, 1.0, 3, 500), _take(5.0, 1.0, 3, 500))
    assert not np.array_equal(_take(5.0, 1.0, 3, 500), _take(5.0, 1.0, 4, 500))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_mean_gap_is_the_inverse_rate_and_burstiness_sets_the_spread(burstiness: float) -> None:
    gaps = _take(8.0, burstiness, 0, 40_000)
    assert gaps.min() >= 0
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    # Gamma(shape k): coefficient of variation 1/sqrt(k); 1 for Poisson arrivals.
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_poisson_counts_per_window() -> None:
    """Burstiness 1: arrivals per unit window are Poisson (variance equals mean)."""
    times = np.cumsum(_take(20.0, 1.0, 11, 60_000))
    counts = np.bincount(times.astype(int))[:-1]
    assert counts.mean() == pytest.approx(20.0, rel=0.03)
    assert counts.var() == pytest.approx(20.0, rel=0.15)


def test_limits() -> None:
    assert _take(4.0, math.inf, 0, 5).tolist() == [0.25] * 5
    assert _take(math.inf, 1.0, 0, 5).tolist() == [0.0] * 5


def test_arrival_times_accumulate_gaps() -> None:
    times = arrival_times(10.0, 1.0, 5, 100)
    assert times == sorted(times) and times[0] > 0
    assert np.allclose(np.diff([0.0, *times]), _take(10.0, 1.0, 5, 100))


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0)])
def test_rejects_bad_parameters(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        next(arrival_gaps(rate, burstiness))
