"""Welford running statistics against numpy, and whitening."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.reward.normalization import RunningStats


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1e4, 1e4), max_size=20), max_size=10))
def test_matches_numpy_over_any_split_into_updates(chunks):
    stats = RunningStats()
    for chunk in chunks:
        stats.update(chunk)
    values = np.array([v for chunk in chunks for v in chunk])
    snap = stats.snapshot()
    assert snap.count == len(values)
    if len(values):
        assert snap.mean == pytest.approx(values.mean(), abs=1e-6)
        assert (snap.min, snap.max) == (values.min(), values.max())
    if len(values) > 1:
        assert snap.std == pytest.approx(values.std(ddof=1), rel=1e-6, abs=1e-6)


def test_empty_and_single_value_and_non_finite():
    stats = RunningStats()
    assert stats.snapshot().count == 0 and stats.std == 0.0
    stats.update([float("nan"), 2.0, float("inf")])
    assert (stats.count, stats.mean, stats.std) == (1, 2.0, 0.0)
    assert stats.whiten([3.0]) == [1.0]  # std counts as 1 until two scores were seen


def test_whitened_scores_have_zero_mean_and_unit_std():
    stats = RunningStats()
    values = [1.0, 2.0, 4.0, 8.0]
    stats.update(values)
    whitened = np.array(stats.whiten(values))
    assert whitened.mean() == pytest.approx(0.0, abs=1e-12)
    assert whitened.std(ddof=1) == pytest.approx(1.0)
    constant = RunningStats()
    constant.update([5.0, 5.0])
    assert constant.whiten([5.0, 6.0]) == [0.0, pytest.approx(1e6)]  # std floored, never a division by 0
