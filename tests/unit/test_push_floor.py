"""The push floor benchmark's verdicts follow from its medians (issue 15: which targets any overlap could reach)."""

from __future__ import annotations

import pytest

from bench.push_floor_bench import floors, floors_by_round

GB = 10**9


def medians(changes: dict[str, float] | None = None) -> dict[str, float]:
    base = {
        "reload alone": 0.5,
        "segment write alone": 0.12,
        "checksum alone": 0.06,
        "raw transport alone": 0.3,
        "reload || checksum": 0.53,
        "reload || sender's checksum || checksum": 0.58,
        "reload || segment write || checksum": 0.65,
        "reload || raw transport": 0.8,
        "disk write + reload": 0.7,
    }
    return {**base, **(changes or {})}


def test_a_floor_above_the_target_is_unreachable():
    result = floors(medians(), GB // 2)
    assert result["same_host_ratio_floor"] == pytest.approx(1.3)
    assert result["zero_copy_ratio_floor"] == pytest.approx(1.16)
    assert result["one_checksum_ratio_floor"] == pytest.approx(1.06)
    assert not result["same_host_reachable"]
    assert result["streamed_gb_per_s_ceiling"] == pytest.approx(0.625)
    assert result["streamed_ratio_ceiling"] == pytest.approx(0.875)
    assert not result["streamed_reachable"]
    assert result["sequential_same_host_s"] == pytest.approx(0.68)
    assert result["sequential_streamed_s"] == pytest.approx(0.8)


def test_overlap_that_hides_the_added_work_makes_the_targets_reachable():
    fast = medians({"reload || segment write || checksum": 0.54, "reload || raw transport": 0.5})
    result = floors(fast, GB // 2)
    assert result["same_host_reachable"] and result["same_host_ratio_floor"] == pytest.approx(1.08)
    assert result["streamed_reachable"] and result["streamed_gb_per_s_ceiling"] == pytest.approx(1.0)
    # 1 GB/s alone is not enough: the streamed push must also be no slower than disk write + reload
    assert not floors({**fast, "disk write + reload": 0.45}, GB // 2)["streamed_reachable"]


def test_each_round_gives_its_own_floors():
    first, second = medians(), medians({"reload alone": 0.65, "reload || raw transport": 0.5})
    runs = {name: [first[name], second[name]] for name in first}
    by_round = floors_by_round(runs, GB // 2)
    assert by_round["same_host_ratio_floor"] == [pytest.approx(1.3), pytest.approx(1.0)]
    assert by_round["streamed_gb_per_s_ceiling"] == [pytest.approx(0.625), pytest.approx(1.0)]
