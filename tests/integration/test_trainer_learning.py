"""Every algorithm raises the reward on a toy task with the tiny model; `evaluate` sees it on held-out prompts.

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
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            hidden.append(model(ids, output_hidden_states=True).hidden_states[-1][0, -8:])
        direction = torch.cat(hidden).mean(0)
        book = tokenizer.encode(" book", add_special_tokens=False)[0]
        embeddings = model.get_input_embeddings().weight
        embeddings[book] = 1.5 * direction / direction.norm() + 0.3 * embeddings[book]
    path = tmp_path_factory.mktemp("policy") / "tiny-llama-book"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def toy_config(policy_server, reward_server, model_dir: Path, output_dir: Path, **overrides) -> TrainerConfig:
    settings = dict(
        policy_address=policy_server.address,
        reward_address=reward_server.address,
        reward_model="length",
        model=str(model_dir),
        output_dir=str(output_dir),
        steps=TOY_STEPS,
        prompts_per_step=4,
        samples_per_prompt=4,
        max_tokens=12,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        kl_coef=0.01,
        micro_batch_size=16,
        push_chunk_mb=4.0,
    )
    settings.update(overrides)
    return TrainerConfig(**settings)


def assert_reward_rose(summary: dict) -> None:
    rewards = [s["reward_mean"] for s in summary["steps"]]
    assert summary["initial_weight_version"] > 0  # the trainer pushed its start weights first
    assert summary["steps"][0]["logprob_abs_diff"] < 1e-3  # ...so the engine sampled from them
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.3, rewards
    assert all(s["kl"] < 5.0 for s in summary["steps"])


def test_grpo_learns_and_evaluate_sees_it_on_held_out_prompts(policy_server, reward_server, book_model_dir, tmp_path):
    trainer = Trainer(toy_config(policy_server, reward_server, book_model_dir, tmp_path / "run"))
    evaluate = EvaluateConfig(
        reward_models=("length", "similarity"), model=str(book_model_dir), samples_per_prompt=2, max_tokens=12
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
    assert before["samples"] == after["samples"] == 16 * 2
    assert before["kl"] == pytest.approx(0.0, abs=1e-3)  # the served policy is the reference
    assert after["kl"] > 0.01
    assert after["reward"]["length"] > before["reward"]["length"] + 0.2
    assert set(after["reward"]) == {"length", "similarity"}
    assert 0 < after["response_length"] <= 12 and 0.0 <= after["bleu"] <= 100.0
    assert after["weight_versions"] == [trainer.version]


@pytest.mark.parametrize("algorithm", ["rloo", "reinforce_pp", "ppo"])
def test_reward_rises_on_the_toy_task(policy_server, reward_server, book_model_dir, tmp_path, algorithm):
    trainer = Trainer(toy_config(policy_server, reward_server, book_model_dir, tmp_path / algorithm, algorithm=algorithm))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert_reward_rose(summary)
    assert summary["algorithm"] == algorithm
