"""Length groups: every row once, bounded padding waste, short rows never padded to a long one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.reward.padding import length_groups


@given(st.lists(st.integers(1, 512), max_size=80), st.floats(0.0, 1.0))
def test_groups_cover_every_row_once_and_bound_the_waste(lengths, max_waste):
    groups = length_groups(lengths, max_waste)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        real = sum(lengths[i] for i in group)
        padded = len(group) * max(lengths[i] for i in group)
        assert len(group) == 1 or padded <= (1 + max_waste) * real + 1e-9


def test_mixed_lengths_split_and_equal_lengths_stay_together():
    assert length_groups([10] * 5) == [[0, 1, 2, 3, 4]]
    assert length_groups([100, 3, 4, 3, 90]) == [[1, 3, 2], [4, 0]]
    assert length_groups([5] * 10, max_rows=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
