"""The Learner on a tiny in-process Llama: updates move the right way, LoRA merges, state round-trips."""

from __future__ import annotations

import pytest
import torch

from services.common.config import build
from services.trainer import lora
from services.trainer.advantages import compute_advantages
from services.trainer.config import TrainerConfig
from services.trainer.learner import Learner, lr_lambda
from services.trainer.rollout import Rollout, sequence_logprobs
from tests.support.tiny_models import save_tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def make_learner(model_dir: str, overrides: dict | None = None) -> Learner:
    """A learner over the tiny model; `overrides` as {"section.field": value}."""
    settings = {
        "model": model_dir,
        "optimizer.learning_rate": 1e-2,
        "optimizer.micro_batch_size": 2,
        "sampling.samples_per_prompt": 2,
        "optimizer.max_grad_norm": 0.0,
        **(overrides or {}),
    }
    torch.manual_seed(0)
    return Learner(build(TrainerConfig, settings), model_dir, torch.device("cpu"))


def make_rollout(learner: Learner) -> Rollout:
    """Two prompts x two samples with the policy's own logprobs as the engine's."""
    sequences = [([1, 2, 3], [4, 5, 6]), ([1, 2, 3], [7, 8]), ([9, 10], [11, 12, 13, 14]), ([9, 10], [15])]
    rollout = Rollout([(p, c, [0.0] * len(c)) for p, c in sequences], pad_id=0)
    with torch.no_grad():
        rollout.behaviour_logp = (
            sequence_logprobs(learner.policy, rollout.input_ids, rollout.attention_mask, 1.0) * rollout.mask
        )
    return rollout


def sampled_logprobs(learner: Learner, rollout: Rollout) -> torch.Tensor:
    with torch.no_grad():
        logp = sequence_logprobs(learner.policy, rollout.input_ids, rollout.attention_mask, 1.0)
    return (logp * rollout.mask).sum(dim=1)


def one_step(learner: Learner, rollout: Rollout, scores=(1.0, 0.0, 0.0, 1.0)) -> dict:
    c = learner.config
    prepared = learner.prepare(rollout)
    advantages, returns = compute_advantages(
        c.objective.algorithm, torch.tensor(scores), rollout.mask, 2, values=prepared.values
    )
    return learner.update(rollout, prepared, advantages, returns, c.objective.kl_coef)


def test_rollout_columns_score_the_next_token():
    rollout = Rollout([([1, 2], [3, 4], [-0.1, -0.2]), ([5], [6], [-0.3])], pad_id=0)
    assert rollout.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    # column j scores token j+1: row 0's completion tokens 3, 4 sit at columns 1, 2
    assert rollout.mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert torch.allclose(rollout.behaviour_logp, torch.tensor([[0.0, -0.1, -0.2], [-0.3, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="logprobs"):
        Rollout([([1], [2, 3], [-0.1])], pad_id=0)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_update_raises_the_logprob_of_rewarded_samples(model_dir, algorithm):
    learner = make_learner(model_dir, {"objective.algorithm": algorithm, "objective.critic_learning_rate": 1e-2})
    rollout = make_rollout(learner)
    before = sampled_logprobs(learner, rollout)
    stats = one_step(learner, rollout)
    after = sampled_logprobs(learner, rollout)
    # samples 0 and 3 won their group, 1 and 2 lost
    assert after[0] > before[0] and after[3] > before[3]
    assert after[1] < before[1] and after[2] < before[2]
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the step
    assert stats["logprob_abs_diff"] < 1e-5 and stats["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["entropy"] > 0


def test_ppo_critic_regresses_towards_the_returns(model_dir):
    learner = make_learner(
        model_dir,
        {
            "objective.algorithm": "ppo",
            "objective.critic_learning_rate": 3e-3,
            "optimizer.learning_rate": 1e-6,
            "objective.value_clip_eps": 100.0,
        },
    )
    rollout = make_rollout(learner)
    losses = [one_step(learner, rollout)["value_loss"] for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0]


def test_kl_loss_and_entropy_bonus_enter_the_loss(model_dir):
    rollout = None
    results = {}
    for name, overrides in {"plain": {}, "entropy": {"objective.entropy_coef": 0.5}}.items():
        learner = make_learner(model_dir, {"objective.kl_coef": 0.0, **overrides})
        rollout = rollout or make_rollout(learner)
        results[name] = one_step(learner, rollout, scores=(1.0, 1.0, 1.0, 1.0))  # zero advantages
    # zero advantages: the plain loss is 0, the entropy bonus makes it -0.5 * entropy
    assert results["plain"]["loss"] == pytest.approx(0.0, abs=1e-7)
    assert results["entropy"]["loss"] == pytest.approx(-0.5 * results["entropy"]["entropy"], rel=1e-4)


def test_several_epochs_use_the_proximal_logprobs_and_clip(model_dir):
    learner = make_learner(
        model_dir, {"objective.ppo_epochs": 3, "objective.clip_eps": 0.01, "optimizer.learning_rate": 5e-2}
    )
    rollout = make_rollout(learner)
    assert learner.prepare(rollout).old_logp is not None
    stats = one_step(learner, rollout)
    assert stats["clip_fraction"] > 0  # epochs 2 and 3 leave the trust region
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # reported from epoch 1


def test_lora_merges_like_peft_and_keeps_the_base_as_reference(model_dir):
    learner = make_learner(
        model_dir, {"lora.rank": 4, "lora.targets": ("q_proj", "v_proj"), "optimizer.learning_rate": 5e-2}
    )
    rollout = make_rollout(learner)
    base = dict(lora.merged_tensors(learner.policy))
    one_step(learner, rollout)
    merged = dict(lora.merged_tensors(learner.policy))
    assert set(merged) == set(base)
    assert lora.changed_names(learner.policy) == {
        f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")
    }
    changed = {name for name in merged if not torch.equal(merged[name], base[name])}
    assert changed == lora.changed_names(learner.policy)
    reference = {n: t.clone() for n, t in learner.policy.merge_and_unload().state_dict().items()}
    for name, tensor in merged.items():
        assert torch.allclose(tensor, reference[name], atol=1e-6), name


def test_lora_reference_is_the_frozen_base(model_dir):
    learner = make_learner(model_dir, {"lora.rank": 4, "optimizer.learning_rate": 5e-2})
    rollout = make_rollout(learner)
    before = learner.reference_logprobs(rollout.input_ids, rollout.attention_mask).detach()
    one_step(learner, rollout)
    after = learner.reference_logprobs(rollout.input_ids, rollout.attention_mask).detach()
    moved = sequence_logprobs(learner.policy, rollout.input_ids, rollout.attention_mask, 1.0).detach()
    assert torch.allclose(before, after)
    assert not torch.allclose(moved * rollout.mask, after * rollout.mask)


@pytest.mark.parametrize(
    "overrides", [{}, {"objective.algorithm": "ppo"}, {"lora.rank": 4}], ids=["full", "ppo", "lora"]
)
def test_save_and_load_continue_identically(model_dir, tmp_path, overrides):
    schedule = {"optimizer.lr_schedule": "cosine", "optimizer.warmup_steps": 1, "steps": 5}
    first = make_learner(model_dir, {**schedule, **overrides})
    rollout = make_rollout(first)
    one_step(first, rollout)
    first.save(tmp_path)
    second = make_learner(model_dir, {**schedule, **overrides})
    second.load(tmp_path)
    a, b = one_step(first, rollout), one_step(second, rollout)
    assert a == b  # same loss, grad norm, learning rate...
    for (name, x), (_, y) in zip(first.policy.named_parameters(), second.policy.named_parameters()):
        assert torch.equal(x, y), name


def test_learning_rate_schedule():
    warm = lr_lambda("constant", 2, 10)
    assert [warm(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = lr_lambda("cosine", 0, 10)
    assert cosine(0) == pytest.approx(1.0) and cosine(5) == pytest.approx(0.55) and cosine(10) == pytest.approx(0.1)
