"""Grouping a batch's rows by length so padding wastes little compute.

A padded forward pass costs rows x longest row. One long text in a batch of short
ones makes every row pay for its length, which on a CPU (where a single pass is
already compute-bound) can cost more than batching saves. Rows are therefore sorted
by token length and cut into consecutive groups whose padded size stays within
`max_waste` of their real size; each group is one forward pass. Outputs are put back
in the original order, and since padding is masked, each row's result is the same as
in any other grouping.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_WASTE = 0.25


def length_groups(lengths: Sequence[int], max_waste: float = MAX_WASTE, max_rows: int = 256) -> list[list[int]]:
    """Indices of `lengths` in groups of similar length (ascending), each padded size <= (1 + max_waste) x real."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        length = lengths[index]
        # Sorted ascending, so the newcomer is the group's longest row.
        if current and (len(current) >= max_rows or (len(current) + 1) * length > (1 + max_waste) * (real + length)):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        groups.append(current)
    return groups
