"""A run stopped after a checkpoint and resumed continues exactly like an uninterrupted one."""

from __future__ import annotations

import json
import shutil

import pytest

from services.trainer.config import TrainerConfig
from services.trainer.loop import Trainer

pytestmark = pytest.mark.integration

COMPARED = ("loss", "policy_loss", "kl", "grad_norm", "reward_mean", "entropy", "completion_tokens", "lr", "data_position")


def run(config: TrainerConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"algorithm": "ppo", "lora_rank": 4, "kl_target": 0.05, "reward_normalize": "running"}],
    ids=["grpo-full", "ppo-lora-adaptive-kl"],
)
def test_resume_reproduces_the_uninterrupted_run(policy_server, reward_server, tmp_path, overrides):
    base = dict(
        policy_address=policy_server.address,
        reward_address=reward_server.address,
        reward_model="length",
        model=str(policy_server.model_dir),
        steps=4,
        prompts_per_step=2,
        samples_per_prompt=3,
        max_tokens=10,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        warmup_steps=3,  # the learning rate differs per step: the scheduler state must come back
        micro_batch_size=4,
        checkpoint_every=2,
        seed=7,
        **overrides,
    )
    straight = run(TrainerConfig(output_dir=str(tmp_path / "straight"), **base))

    interrupted_dir = tmp_path / "interrupted"
    run(TrainerConfig(output_dir=str(interrupted_dir), **{**base, "steps": 3}))
    # as if killed after logging step 3 but before its checkpoint: the newest is step 2's
    shutil.rmtree(interrupted_dir / "checkpoints" / "step-000003")
    resumed = run(TrainerConfig(output_dir=str(interrupted_dir), resume="latest", **base))

    assert resumed["resumed_from"].endswith("step-000002")
    assert [s["step"] for s in resumed["steps"]] == [3, 4]
    # the resumed run pushed its checkpoint weights before sampling: the engine matches the trainer
    assert resumed["steps"][0]["logprob_abs_diff"] < 1e-3
    for expected, got in zip(straight["steps"][2:], resumed["steps"]):
        for key in COMPARED:
            assert got[key] == expected[key], (got["step"], key)
        assert got["kl_coef"] == expected["kl_coef"]
    # step 3 of the killed run is redone, not duplicated, in the metrics log
    steps = [json.loads(line)["step"] for line in (interrupted_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
