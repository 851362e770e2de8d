"""Every algorithm raises the reward on a toy task with the tiny model; `evaluate` measures it on the served weights.

The toy task: the reward service's "length" rules model (+1 if " book" appears,
plus a length term). The session's tiny random Llama spreads its mass over ~49k
tokens, so no reward signal ever appears; the start checkpoint here is that model
with the " book" embedding pointed along the typical final hidden state, so about
half the samples say "book" at first and RL has something to reinforce. The policy
service serves whatever the trainer pushes (same tensor names and shapes), and the
trainer pushes its start weights first because the served checkpoint differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.common.config import build
from services.trainer.config import TrainerConfig
from services.trainer.evaluate import EvaluateConfig, Evaluator
from services.trainer.loop import Trainer

pytestmark = pytest.mark.integration

TOY_STEPS = 6


@pytest.fixture(scope="module")
def book_model_dir(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    prompts = [json.loads(line)["prompt"] for line in Path("data/book_reviews.jsonl").read_text().splitlines()[:16]]
    with torch.no_grad():
        hidden = []
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            hidden.append(model(ids, output_hidden_states=True).hidden_states[-1][0, -8:])
        direction = torch.cat(hidden).mean(0)
        book = tokenizer.encode(" book", add_special_tokens=False)[0]
        embeddings = model.get_input_embeddings().weight
        embeddings[book] = 1.5 * direction / direction.norm() + 0.3 * embeddings[book]
    path = tmp_path_factory.mktemp("policy") / "tiny-llama-book"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def toy_config(
    policy_server, reward_server, model_dir: Path, output_dir: Path, overrides: dict | None = None
) -> TrainerConfig:
    settings = {
        "endpoints.policy": policy_server.address,
        "endpoints.reward": reward_server.address,
        "rewards.model": "length",
        "model": str(model_dir),
        "run.output_dir": str(output_dir),
        "steps": TOY_STEPS,
        "sampling.prompts_per_step": 4,
        "sampling.samples_per_prompt": 4,
        "sampling.max_tokens": 12,
        "optimizer.learning_rate": 1e-3,
        "objective.critic_learning_rate": 1e-3,
        "objective.kl_coef": 0.01,
        "optimizer.micro_batch_size": 16,
        "push.chunk_mb": 4.0,
    }
    settings.update(overrides or {})
    return build(TrainerConfig, settings)


def assert_reward_rose(summary: dict) -> None:
    rewards = [s["reward_mean"] for s in summary["steps"]]
    assert summary["initial_weight_version"] > 0  # the trainer pushed its start weights first
    assert summary["steps"][0]["logprob_abs_diff"] < 1e-3  # ...so the engine sampled from them
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.3, rewards
    assert all(s["kl"] < 5.0 for s in summary["steps"])


def test_grpo_learns_and_evaluate_measures_it_on_the_served_weights(
    policy_server, reward_server, book_model_dir, tmp_path
):
    # Evaluated on 16 of the training prompts: six steps teach the 6.6 M-parameter random model its training
    # prompts, not held-out ones (measured with distinct sampling seeds per prompt: held-out length reward
    # 1.233 -> 1.216 over 64 samples), and what this test checks is that `evaluate` measures the served weights.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(Path("data/book_reviews.jsonl").read_text().splitlines(keepends=True)[:16]))
    trainer = Trainer(toy_config(policy_server, reward_server, book_model_dir, tmp_path / "run"))
    evaluate = build(
        EvaluateConfig,
        {
            "reward_models": ("length", "similarity"),
            "model": str(book_model_dir),
            "prompts_file": str(prompts),
            "sampling.samples_per_prompt": 4,
            "sampling.max_tokens": 12,
        },
    )
    evaluator = Evaluator(
        evaluate, trainer.policy_client, trainer.reward_client, trainer.learner.reference_logprobs, trainer.pad_id
    )
    try:
        trainer.sync_policy("evaluate: start weights")
        before = evaluator.run()
        summary = trainer.run()
        after = evaluator.run()
    finally:
        trainer.close()
    assert_reward_rose(summary)
    assert before["samples"] == after["samples"] == 16 * 4
    assert before["kl"] == pytest.approx(0.0, abs=1e-3)  # the served policy is the reference
    assert after["kl"] > 0.01
    # Measured: 1.136 -> 1.306 over 64 samples; one standard error of the difference is about 0.09.
    assert after["reward"]["length"] > before["reward"]["length"] + 0.1
    assert set(after["reward"]) == {"length", "similarity"}
    assert 0 < after["response_length"] <= 12 and 0.0 <= after["bleu"] <= 100.0
    assert after["weight_versions"] == [trainer.version]


@pytest.mark.parametrize("algorithm", ["rloo", "reinforce_pp", "ppo", "ppg"])
def test_reward_rises_on_the_toy_task(policy_server, reward_server, book_model_dir, tmp_path, algorithm):
    overrides = {"objective.algorithm": algorithm}
    if algorithm == "ppg":  # an auxiliary phase every 2nd step, so the 6 steps hold 3 of them
        overrides |= {"ppg.policy_phases": 2, "ppg.aux_epochs": 2}
    config = toy_config(policy_server, reward_server, book_model_dir, tmp_path / algorithm, overrides)
    trainer = Trainer(config)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert_reward_rose(summary)
    assert summary["algorithm"] == algorithm
    if algorithm == "ppg":
        assert [s["aux_phase"] for s in summary["steps"]] == [0, 1, 0, 2, 0, 3]
        assert all(s["aux_value_loss"] > 0 for s in summary["steps"][1::2])
