"""Trainer pieces without servers: config checks, async producer, checkpoint discovery, curves, BLEU."""

from __future__ import annotations

import json
import threading

import pytest

from services.common.config import build
from services.trainer.async_rollout import AsyncBatches, SyncBatches, take_fresh
from services.trainer.checkpoint import checkpoint_dir, latest_checkpoint, resolve_resume
from services.trainer.config import Objective, Rewards, TrainerConfig
from services.trainer.curves import plot_run
from services.trainer.evaluate import bleu


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"objective.algorithm": "dpo"}, "objective.algorithm must be one of"),
        ({"objective.kl_estimator": "k2"}, "objective.kl_estimator"),
        ({"rewards.combine": "max"}, "rewards.combine"),
        ({"sampling.samples_per_prompt": 1}, "samples_per_prompt"),
        ({"objective.algorithm": "rloo", "sampling.samples_per_prompt": 1}, "samples_per_prompt"),
        ({"async_rollouts": True, "max_staleness": 0}, "max_staleness"),
        ({"push.scope": "changed"}, "needs LoRA"),
        ({"sampling.temperature": 0.0}, "temperature"),
        ({"optimizer.lr_schedule": "linear"}, "optimizer.lr_schedule"),
        ({"push.dtype": "int8"}, "push.dtype"),
        ({"dist_backend": "mpi"}, "dist_backend"),
    ],
)
def test_bad_settings_are_named_when_the_config_is_made(overrides, fragment):
    """Every check runs in __post_init__: no caller has to remember a validate() call."""
    with pytest.raises(ValueError, match=fragment):
        build(TrainerConfig, overrides)


def test_kl_placement_follows_each_algorithm_unless_set():
    assert Objective(algorithm="grpo").kl_placement == "loss"
    assert Objective(algorithm="ppo").kl_placement == "reward"
    assert Objective(algorithm="rloo", kl_in="loss").kl_placement == "loss"
    build(TrainerConfig, {"objective.algorithm": "reinforce_pp", "sampling.samples_per_prompt": 1})  # no groups needed
    assert Rewards(models=("a", "b")).names == ("a", "b")
    assert TrainerConfig(rewards=Rewards(model="a")).rewards.names == ("a",)


def test_sync_batches_count_up_from_the_resume_point():
    batches = SyncBatches(lambda index: index * 10, first_index=3)
    assert [batches.next(), batches.next()] == [30, 40]


def test_async_batches_stay_exactly_one_ahead():
    made = {index: threading.Event() for index in range(5, 9)}

    def make(index: int) -> int:
        made[index].set()
        return index

    batches = AsyncBatches(make, first_index=5)
    try:
        assert made[5].wait(5.0)
        assert not made[6].wait(0.3)  # no free slot until the consumer takes batch 5
        assert batches.next() == 5
        assert made[6].wait(5.0)  # made while the consumer "trains" on 5
        assert not made[7].wait(0.3)
        assert batches.next() == 6
    finally:
        batches.close()


class FakeBatch:
    def __init__(self, index: int, version: int) -> None:
        self.index, self.versions = index, [version, version]


def test_batches_older_than_max_staleness_are_dropped():
    versions = iter([3, 5, 6])  # the trainer is at version 6
    batches = SyncBatches(lambda index: FakeBatch(index, next(versions)), first_index=0)
    fresh = take_fresh(batches, version=6, max_staleness=1)
    assert fresh.batch.index == 1 and fresh.dropped == 1 and fresh.staleness == [1, 1]
    fresh = take_fresh(batches, version=6, max_staleness=1)
    assert fresh.batch.index == 2 and fresh.dropped == 0 and fresh.staleness == [0, 0]


def test_async_batches_surface_producer_errors():
    def make(index: int) -> int:
        raise ConnectionError("policy unreachable")

    batches = AsyncBatches(make, first_index=0)
    with pytest.raises(RuntimeError, match="producer thread failed") as info:
        batches.next()
    assert isinstance(info.value.__cause__, ConnectionError)
    batches.close()


def test_latest_checkpoint_ignores_partial_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", tmp_path)
    for step in (2, 10):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
        (checkpoint_dir(tmp_path, step) / "trainer_state.json").write_text("{}")
    checkpoint_dir(tmp_path, 11).with_name("step-000011.partial").mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)
    assert resolve_resume("latest", tmp_path) == checkpoint_dir(tmp_path, 10)
    assert resolve_resume(str(checkpoint_dir(tmp_path, 2)), tmp_path) == checkpoint_dir(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="not a trainer checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_curves_png_from_metrics(tmp_path):
    lines = [
        {
            "step": s,
            "algorithm": "rloo",
            "reward_mean": 0.1 * s,
            "reward_std": 0.05,
            "reward_models": {"a": s, "b": -s},
            "kl": 0.01 * s,
            "kl_coef": 0.05 + 0.001 * s,
            "entropy": 2.0 - 0.1 * s,
            "seconds": {"generate": 1.0, "score": 0.2, "train": 3.0, "push": 0.5},
        }
        for s in range(1, 6)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    png = plot_run(tmp_path / "metrics.jsonl", tmp_path / "out" / "curves.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no steps"):
        plot_run(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_bleu_is_sacrebleus_corpus_score():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["completely different words here"], ["the cat sat on the mat"]) < 10.0
