"""Three trainer steps against the live policy and reward services."""

from __future__ import annotations

import json
import math

import pytest

from services.common.config import build
from services.trainer.config import TrainerConfig
from services.trainer.loop import Trainer

pytestmark = pytest.mark.integration


def test_three_steps_push_a_new_version_each(policy_server, reward_server, tmp_path):
    config = build(
        TrainerConfig,
        {
            "endpoints.policy": policy_server.address,
            "endpoints.reward": reward_server.address,
            "rewards.model": "length",
            "model": str(policy_server.model_dir),
            "run.output_dir": str(tmp_path / "run"),
            "steps": 3,
            "sampling.prompts_per_step": 2,
            "sampling.samples_per_prompt": 3,
            "sampling.max_tokens": 12,
            "optimizer.learning_rate": 1e-3,
            "optimizer.micro_batch_size": 4,
            "push.chunk_mb": 1.0,
        },
    )
    trainer = Trainer(config)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    steps = summary["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    start = summary["initial_weight_version"]
    assert [s["weight_version"] for s in steps] == [start + 1, start + 2, start + 3]
    # each step samples with the version the previous step pushed (synchronous on-policy)
    assert [s["sampled_with_versions"] for s in steps] == [[start], [start + 1], [start + 2]]
    for record in steps:
        assert math.isfinite(record["reward_mean"]) and record["kl"] >= 0
        assert record["completion_tokens"] > 0 and record["push_bytes"] > 0
        # engine logprobs match the trainer's recomputation before the update
        assert record["logprob_abs_diff"] < 1e-3
        assert set(record["seconds"]) == {"generate", "score", "train", "push"}
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert steps[-1]["kl"] > 0  # updates moved the policy away from the reference
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["final_weight_version"] == start + 3
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
