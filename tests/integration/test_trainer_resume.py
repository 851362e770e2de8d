"""A run stopped after a checkpoint and resumed continues exactly like an uninterrupted one."""

from __future__ import annotations

import json
import shutil

import pytest

from services.common.config import build
from services.trainer.config import TrainerConfig
from services.trainer.loop import Trainer
from services.trainer.ppg import STAT_KEYS as PPG_STAT_KEYS

pytestmark = pytest.mark.integration

COMPARED = (
    "loss",
    "policy_loss",
    "kl",
    "grad_norm",
    "reward_mean",
    "entropy",
    "completion_tokens",
    "lr",
    "data_position",
)


def run(config: TrainerConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"objective.algorithm": "ppo", "lora.rank": 4, "objective.kl_target": 0.05, "rewards.normalize": "running"},
        # the checkpoint at step 2 holds 2 buffered rollouts; step 3 runs the auxiliary phase from them
        {"objective.algorithm": "ppg", "lora.rank": 4, "ppg.policy_phases": 3, "ppg.aux_epochs": 2},
    ],
    ids=["grpo-full", "ppo-lora-adaptive-kl", "ppg-lora-mid-aux-buffer"],
)
def test_resume_reproduces_the_uninterrupted_run(policy_server, reward_server, tmp_path, overrides):
    base = {
        "endpoints.policy": policy_server.address,
        "endpoints.reward": reward_server.address,
        "rewards.model": "length",
        "model": str(policy_server.model_dir),
        "steps": 4,
        "sampling.prompts_per_step": 2,
        "sampling.samples_per_prompt": 3,
        "sampling.max_tokens": 10,
        "optimizer.learning_rate": 1e-3,
        "objective.critic_learning_rate": 1e-3,
        "optimizer.warmup_steps": 3,  # the learning rate differs per step: the scheduler state must come back
        "optimizer.micro_batch_size": 4,
        "checkpoint_every": 2,
        "run.seed": 7,
        **overrides,
    }
    straight = run(build(TrainerConfig, {**base, "run.output_dir": str(tmp_path / "straight")}))

    interrupted_dir = tmp_path / "interrupted"
    run(build(TrainerConfig, {**base, "run.output_dir": str(interrupted_dir), "steps": 3}))
    # as if killed after logging step 3 but before its checkpoint: the newest is step 2's
    shutil.rmtree(interrupted_dir / "checkpoints" / "step-000003")
    resumed = run(build(TrainerConfig, {**base, "run.output_dir": str(interrupted_dir), "resume": "latest"}))

    assert resumed["resumed_from"].endswith("step-000002")
    assert [s["step"] for s in resumed["steps"]] == [3, 4]
    # the resumed run pushed its checkpoint weights before sampling: the engine matches the trainer
    assert resumed["steps"][0]["logprob_abs_diff"] < 1e-3
    for expected, got in zip(straight["steps"][2:], resumed["steps"]):
        for key in COMPARED + tuple(k for k in PPG_STAT_KEYS if k in expected):
            assert got[key] == expected[key], (got["step"], key)
        assert got["kl_coef"] == expected["kl_coef"]
    if overrides.get("objective.algorithm") == "ppg":  # the resumed step 3 ran the phase from the restored buffer
        assert [s["aux_phase"] for s in resumed["steps"]] == [1, 0]
    # step 3 of the killed run is redone, not duplicated, in the metrics log
    steps = [json.loads(line)["step"] for line in (interrupted_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
