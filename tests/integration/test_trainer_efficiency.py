"""Async rollouts (bounded staleness, logged) and LoRA with partial weight pushes, against the live services."""

from __future__ import annotations

import grpc
import pytest
import torch

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.config import build
from services.common.prompts import PromptRow
from services.common.weight_stream import push_requests
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.loop import Trainer
from services.trainer.rollout import Rollout, SamplingSettings, generate, sequence_logprobs

pytestmark = pytest.mark.integration


def tiny_config(policy_server, reward_server, tmp_path, overrides: dict | None = None) -> TrainerConfig:
    settings = {
        "endpoints.policy": policy_server.address,
        "endpoints.reward": reward_server.address,
        "rewards.model": "length",
        "model": str(policy_server.model_dir),
        "run.output_dir": str(tmp_path / "run"),
        "steps": 4,
        "sampling.prompts_per_step": 2,
        "sampling.samples_per_prompt": 3,
        "sampling.max_tokens": 10,
        "optimizer.learning_rate": 1e-3,
        "optimizer.micro_batch_size": 8,
    }
    settings.update(overrides or {})
    return build(TrainerConfig, settings)


def staleness_count() -> float:
    return next(s.value for m in metrics.SAMPLE_STALENESS.collect() for s in m.samples if s.name.endswith("_count"))


def test_async_rollouts_overlap_and_log_staleness(policy_server, reward_server, tmp_path):
    counted = staleness_count()
    trainer = Trainer(tiny_config(policy_server, reward_server, tmp_path, {"async_rollouts": True, "max_staleness": 1}))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    steps, start = summary["steps"], summary["initial_weight_version"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert steps[0]["staleness"] == {"0": 6}  # the first batch is sampled before any update
    # later batches are generated while the previous step trains, so they come from the
    # version before that step's push (staleness 1), unless generation only reached the
    # server after the push began (staleness 0); never older
    lags = []
    for number, record in enumerate(steps[1:], start=2):
        trainer_version = start + number - 1
        [sampled] = record["sampled_with_versions"]
        lag = trainer_version - sampled
        assert lag in (0, 1) and record["staleness"] == {str(lag): 6}
        assert record["policy_version_lag"] == lag
        assert record["is_weight_mean"] > 0 and "wait" in record["seconds"]
        lags.append(lag)
    assert 1 in lags  # generation did overlap training
    assert staleness_count() - counted == 4 * 6  # every used sample went into the histogram
    assert metrics.POLICY_VERSION_LAG._value.get() == lags[-1]


def test_lora_partial_pushes_serve_the_trainers_weights(policy_server, reward_server, tmp_path):
    config = tiny_config(
        policy_server,
        reward_server,
        tmp_path,
        {
            "steps": 3,
            "lora.rank": 4,
            "lora.targets": ("q_proj", "v_proj"),
            "push.scope": "changed",
            "optimizer.learning_rate": 2e-2,
        },
    )
    trainer = Trainer(config)
    try:
        summary = trainer.run()
        full_bytes = sum(t.numel() * 4 for _, t in trainer.learner.push_tensors())
        # after the last partial push, the served logprobs equal the trainer's merged model's
        row = PromptRow("Write a short review of Dune.", None)
        response = generate(trainer.policy_client, [row], SamplingSettings(2, 10, 1.0, 1.0, True, 3), 0, "check")
        rollout = Rollout.from_response(response, trainer.pad_id)
        with torch.no_grad():
            logp = sequence_logprobs(trainer.learner.policy, rollout.input_ids, rollout.attention_mask, 1.0)
        gap = ((logp - rollout.behaviour_logp).abs() * rollout.mask).max().item()
    finally:
        trainer.close()
    assert gap < 2e-3
    for record in summary["steps"]:
        # q_proj and v_proj of 2 layers changed; k_proj rides along to complete each fused qkv
        assert record["push_tensors"] == 6
        assert record["push_bytes"] < full_bytes / 10
        assert record["logprob_abs_diff"] < 1e-3  # steps 2 and 3 sampled from partially pushed weights
    assert summary["steps"][-1]["kl"] > 0


def test_live_server_refuses_a_push_that_splits_a_fused_group(policy_server):
    channel = open_channel(policy_server.address)
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    try:
        before = stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version
        q = torch.zeros(128, 128)
        with pytest.raises(grpc.RpcError) as info:
            stub.PushWeights(push_requests([("model.layers.0.self_attn.q_proj.weight", q)]), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k_proj" in info.value.details()
        status = stub.GetStatus(policy_pb2.GetStatusRequest())
        assert status.weight_version == before and status.state == policy_pb2.ENGINE_STATE_SERVING
    finally:
        channel.close()
