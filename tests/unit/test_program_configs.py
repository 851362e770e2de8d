"""Every program's config checks itself when made: a wrong value fails at start-up, naming the setting."""

from __future__ import annotations

import pytest

from bench.learning_bench import LearningBenchConfig
from bench.reward_bench import BenchConfig
from services.online.demo import OnlineDemoConfig


def test_the_defaults_are_valid():
    LearningBenchConfig()
    BenchConfig()
    OnlineDemoConfig()


@pytest.mark.parametrize(
    ("cls", "values", "named"),
    [
        (LearningBenchConfig, {"tasks": ("similarity", "jokes")}, "tasks"),
        (LearningBenchConfig, {"samples_per_prompt": 1}, "samples_per_prompt"),
        (BenchConfig, {"concurrency": ("4", "many")}, "concurrency"),
        (BenchConfig, {"requests": 0}, "requests"),
        (OnlineDemoConfig, {"canary_fraction": 1.5}, "canary_fraction"),
        (OnlineDemoConfig, {"duration_s": 0.0}, "duration_s"),
        (OnlineDemoConfig, {"samples_per_prompt": 1}, "samples_per_prompt"),
    ],
)
def test_a_wrong_value_is_refused_with_its_name(cls, values, named):
    with pytest.raises(ValueError, match=named):
        cls(**values)
