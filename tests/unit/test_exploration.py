"""Exploration controls: temperature schedules, diversity metrics, their settings and the loss's temperature."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.v1 import policy_pb2
from services.common.config import load_config
from services.common.sections import Optimizer, Sampling
from services.trainer.config import TrainerConfig
from services.trainer.exploration import (
    ExplorationSettings,
    TemperatureSchedule,
    distinct_n,
    exploration_record,
    group_distinct_n,
    temperature_at,
    zero_signal_share,
)
from services.trainer.learner import Learner
from services.trainer.rollout import Rollout, sequence_logprobs


def test_schedules_go_from_start_to_end():
    assert [temperature_at("constant", 1.2, 0.5, s, 5) for s in range(5)] == [1.2] * 5
    assert [round(temperature_at("linear", 1.2, 0.4, s, 5), 6) for s in range(6)] == [1.2, 1.0, 0.8, 0.6, 0.4, 0.4]
    cosine = [temperature_at("cosine", 1.0, 0.5, s, 3) for s in range(3)]
    # progress 0, 1/2, 1: 0.5 + 0.5 * 0.5 * (1 + cos(pi * p)) -> 1.0, 0.75, 0.5
    assert cosine == pytest.approx([1.0, 0.75, 0.5])
    with pytest.raises(ValueError, match="unknown temperature schedule"):
        temperature_at("step", 1.0, 0.5, 0, 3)


def test_schedule_steps_default_to_the_run_and_hold_the_end():
    run = TemperatureSchedule(ExplorationSettings(temperature_schedule="linear", temperature_end=0.5), 1.0, run_steps=3)
    assert [run(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.5])
    short = TemperatureSchedule(
        ExplorationSettings(temperature_schedule="linear", temperature_end=0.5, schedule_steps=2), 1.0, 10
    )
    assert [short(s) for s in range(3)] == pytest.approx([1.0, 0.5, 0.5])


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"temperature_schedule": "step"}, "temperature_schedule must be one of"),
        ({"temperature_schedule": "cosine"}, "temperature_end must be > 0"),
        ({"temperature_schedule": "linear", "temperature_end": -0.5}, "temperature_end must be > 0"),
        ({"distinct_n": 0}, "distinct_n >= 1"),
        ({"schedule_steps": -1}, "schedule_steps must be >= 0"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(bad, message):
    with pytest.raises(ValueError, match=message):
        ExplorationSettings(**bad)


def test_settings_are_flags_with_help_and_errors(capsys):
    config = load_config(
        TrainerConfig, ["--exploration.temperature-schedule", "cosine", "--exploration.temperature-end", "0.7"]
    )
    assert config.exploration.temperature_schedule == "cosine" and config.exploration.temperature_end == 0.7
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--help"])
    out = capsys.readouterr().out
    assert "--exploration.temperature-schedule" in out and "--exploration.distinct-n" in out
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--exploration.temperature-schedule", "linear"])
    assert "exploration.temperature_end must be > 0" in capsys.readouterr().err


def test_distinct_n_by_hand():
    # bigrams: (1,2) (2,3) | (1,2) (2,4) -> 3 distinct of 4
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 0.75
    assert distinct_n([[5, 5, 5]], 1) == pytest.approx(1 / 3)
    assert distinct_n([[1], []], 2) == 1.0  # no bigrams at all
    # group 1 all different unigrams (1.0), group 2 identical samples (2 distinct of 4)
    assert group_distinct_n([[[1, 2], [3, 4]], [[7, 8], [7, 8]]], 1) == pytest.approx(0.75)


def test_zero_signal_share_counts_groups_with_equal_rewards():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5 + 1e-9])
    assert zero_signal_share(rewards, 2) == pytest.approx(2 / 3)
    assert zero_signal_share(torch.tensor([0.0, 1.0, 2.0]), 3) == 0.0
    with pytest.raises(ValueError):
        zero_signal_share(torch.ones(5), 2)


def test_exploration_record_from_a_response():
    response = policy_pb2.GenerateResponse(
        results=[
            policy_pb2.PromptResult(samples=[policy_pb2.Sample(token_ids=[1, 2]), policy_pb2.Sample(token_ids=[1, 2])]),
            policy_pb2.PromptResult(samples=[policy_pb2.Sample(token_ids=[3, 4]), policy_pb2.Sample(token_ids=[5, 6])]),
        ]
    )
    record = exploration_record(response, torch.tensor([1.0, 1.0, 0.0, 1.0]), 1, 0.8)
    assert record == {"temperature": 0.8, "distinct_n": pytest.approx(0.75), "zero_signal_groups": 0.5}


def test_the_loss_uses_the_temperature_that_sampled_the_batch(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path)
    learner = Learner(
        TrainerConfig(
            model=str(tmp_path),
            sampling=Sampling(samples_per_prompt=2, temperature=1.0),
            optimizer=Optimizer(micro_batch_size=4),
        ),
        str(tmp_path),
        torch.device("cpu"),
    )
    rollout = Rollout([([1, 2], [3, 4], [0.0, 0.0]), ([1, 2], [5], [0.0])], pad_id=0)
    rollout.temperature = 0.5
    with torch.no_grad():
        hot = sequence_logprobs(learner.policy, rollout.input_ids, rollout.attention_mask, 0.5) * rollout.mask
    rollout.behaviour_logp = hot
    prepared = learner.prepare(rollout)
    assert learner.temperature(rollout) == 0.5
    # the policy is the reference: at the sampling temperature the trainer's logprobs equal the engine's
    assert torch.allclose(prepared.ref_logp * rollout.mask, hot, atol=1e-6)
    stats = learner.update(rollout, prepared, torch.zeros(2, rollout.mask.shape[1]), None, 0.0)
    assert stats["logprob_abs_diff"] < 1e-6
    rollout.temperature = None  # falls back to sampling.temperature (1.0): the engine's T=0.5 logprobs differ
    assert learner.temperature(rollout) == 1.0
    assert not math.isclose(float(learner.prepare(rollout).ref_logp.sum()), float(hot.sum()), rel_tol=1e-4)
