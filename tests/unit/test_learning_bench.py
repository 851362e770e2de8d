"""The learning and exploration benchmarks: paired statistics over held-out prompts, the joint run's files."""

from __future__ import annotations

import math
import tomllib
from collections import Counter

import pytest

from bench.learning_bench import LearningBenchConfig, joint_files
from bench.rl_runs import paired_difference, rewards_toml, t975, z_score
from services.common.prompts import load_prompts
from services.trainer.tasks import TaskSampler, load_tasks


def test_paired_difference_by_hand():
    first, second = [0.1, 0.5, 0.2, 0.6], [0.2, 0.5, 0.4, 0.6]  # diffs 0.1, 0, 0.2, 0
    stats = paired_difference(first, second)
    sd = math.sqrt(((0.1 - 0.075) ** 2 + 0.075**2 + (0.2 - 0.075) ** 2 + 0.075**2) / 3)
    assert stats["mean"] == pytest.approx(0.075) and stats["se"] == pytest.approx(sd / 2) and stats["n"] == 4
    assert stats["ci95"] == pytest.approx([0.075 - 3.182 * sd / 2, 0.075 + 3.182 * sd / 2])  # t(0.975, 3 df)
    assert stats["z"] == pytest.approx(0.075 / (sd / 2))
    before = {"reward_by_prompt": {"m": first}}
    assert z_score(before, {"reward_by_prompt": {"m": second}}, "m") == pytest.approx(stats["z"])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([0.1], [0.2])
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.3])  # unpaired lengths are a bug, not a statistic


def test_t_quantiles():
    assert t975(15) == 2.131 and t975(1) == 12.706 and t975(30) == 2.042 and t975(200) == 1.96


def test_rewards_toml_is_the_services_models_file():
    models = tomllib.loads(rewards_toml(("similarity", "rules"), 20, "story"))["models"]
    assert [m["name"] for m in models] == ["similarity", "rules"]
    assert models[1]["target_words"] == 20 and models[1]["required_words"] == ["story"]
    assert [m["name"] for m in tomllib.loads(rewards_toml(("rules",), 5, "x"))["models"]] == ["rules"]
    with pytest.raises(ValueError, match="no reward model \\['jokes'\\]"):
        rewards_toml(("jokes",), 20, "story")


def test_the_joint_run_gives_each_task_exactly_its_single_task_samples(tmp_path):
    config = LearningBenchConfig(similarity_steps=6, rules_steps=2, work_dir=str(tmp_path))
    prompts, tasks = joint_files(config, tmp_path)
    rows = load_prompts(prompts)
    originals = load_prompts(config.prompts_file)
    assert Counter(row.task for row in rows) == {"similarity": len(originals), "rules": len(originals)}
    assert {(r.prompt, r.reference) for r in rows if r.task == "rules"} == {(r.prompt, r.reference) for r in originals}
    specs = load_tasks(tasks)
    assert {name: (s.reward_models, s.weight) for name, s in specs.items()} == {
        "similarity": (("similarity",), 6.0),
        "rules": (("rules",), 2.0),
    }
    draws = TaskSampler(rows, specs, seed=0).next_batch((6 + 2) * config.prompts_per_step)
    assert Counter(row.task for row in draws) == {"similarity": 6 * 4, "rules": 2 * 4}


def test_the_joint_run_needs_both_tasks():
    with pytest.raises(ValueError, match="joint needs both tasks"):
        LearningBenchConfig(tasks=("rules",))
    with pytest.raises(ValueError, match="joint needs both tasks"):
        LearningBenchConfig(rules_steps=0)
    LearningBenchConfig(tasks=("rules",), joint=False)


def test_exploration_bench_settings_are_checked():
    from bench.exploration_bench import ExplorationBenchConfig

    ExplorationBenchConfig()
    for bad, named in [({"end": 0.0}, "end"), ({"steps": 0}, "steps"), ({"samples_per_prompt": 1}, "samples_per")]:
        with pytest.raises(ValueError, match=named):
            ExplorationBenchConfig(**bad)
