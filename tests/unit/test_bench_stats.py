"""The benchmarks' statistics say what they measured (issue 16, defect 8)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.learning_bench import z_score

ROOT = Path(__file__).resolve().parents[2]


def _evaluation(by_prompt: list[float], samples_per_prompt: int) -> dict:
    mean = sum(by_prompt) / len(by_prompt)
    return {
        "reward": {"m": mean},
        # every sample equals its prompt's mean: 4 copies of one number are not 4 observations
        "reward_std": {"m": math.sqrt(sum((x - mean) ** 2 for x in by_prompt) / len(by_prompt))},
        "reward_by_prompt": {"m": by_prompt},
        "samples": len(by_prompt) * samples_per_prompt,
    }


def test_learning_z_is_clustered_by_prompt():
    before = _evaluation([0.1, 0.5, 0.2, 0.6], samples_per_prompt=4)
    after = _evaluation([0.2, 0.5, 0.4, 0.6], samples_per_prompt=4)
    diffs = [0.1, 0.0, 0.2, 0.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert z_score(before, after, "m") == pytest.approx(mean / (sd / 2))
    # more samples of the same prompts add no information: z must not grow with them
    assert z_score(_evaluation([0.1, 0.5, 0.2, 0.6], 64), _evaluation([0.2, 0.5, 0.4, 0.6], 64), "m") == pytest.approx(
        z_score(before, after, "m")
    )


def test_scaling_bench_writes_no_unmeasured_ratio():
    source = (ROOT / "bench" / "scaling_bench.py").read_text()
    assert "0.33x measured" not in source
