"""Advantages, losses, KL control and reward processing against small hand-computed examples."""

import math

import pytest
import torch

from services.trainer.advantages import (
    compute_advantages,
    gae,
    group_advantages,
    returns_to_go,
    rloo_advantages,
    token_rewards,
    whiten,
)
from services.trainer.kl_control import KLController
from services.trainer.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    importance_weights,
    kl_estimate,
    logprobs_and_entropy,
    token_entropy,
)
from services.trainer.rewards import RewardProcessor, RunningMoments, combine

# ---- advantages -------------------------------------------------------------


def test_rloo_leaves_each_sample_out_of_its_own_baseline():
    # groups of 2: baseline is the other sample -> [1-3, 3-1], [5-5, 5-5]
    assert torch.allclose(rloo_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2), torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    # group of 3: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    assert torch.allclose(rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3), torch.tensor([-3.0, -1.5, 4.5]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(5), 2)


def test_grpo_and_rloo_differ_only_by_scale_within_a_group():
    rewards = torch.tensor([0.0, 1.0, 4.0, 2.0])
    g, r = group_advantages(rewards, 4, eps=0.0), rloo_advantages(rewards, 4)
    # rloo = k/(k-1) (r - mean); grpo = (r - mean) / std
    std = rewards.std(unbiased=False)
    assert torch.allclose(r, (4 / 3) * g * std, atol=1e-6)


MASK = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


def test_token_rewards_put_the_score_on_the_last_completion_token():
    rewards = token_rewards(torch.tensor([1.0, 2.0]), MASK)
    assert torch.equal(rewards, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
    penalty = torch.full_like(MASK, 0.1)
    rewards = token_rewards(torch.tensor([1.0, 2.0]), MASK, penalty)
    assert torch.allclose(rewards, torch.tensor([[0.0, -0.1, 0.9, 0.0], [0.0, 1.9, 0.0, 0.0]]))


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 9 lies past the completion
    # gamma 0.5: G2 = 2, G1 = 1 + 0.5*2 = 2, G0 = 0 + 0.5*2 = 1
    assert torch.allclose(returns_to_go(rewards, mask, 0.5), torch.tensor([[1.0, 2.0, 2.0, 0.0]]))


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # deltas: d2 = 1 - 0.4 = 0.6 (terminal), d1 = 0 + 0.4 - 0.2 = 0.2, d0 = 0 + 0.2 - 0.5 = -0.3
    # A2 = 0.6, A1 = 0.2 + 0.5 * 0.6 = 0.5, A0 = -0.3 + 0.5 * 0.5 = -0.05
    assert torch.allclose(advantages, torch.tensor([[-0.05, 0.5, 0.6]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.45, 0.7, 1.0]]), atol=1e-6)


def test_gae_with_lambda_one_is_monte_carlo_and_respects_the_mask():
    rewards = torch.tensor([[0.0, 0.0, 0.5, 1.0, 0.0]])
    values = torch.tensor([[3.0, 0.3, -0.2, 0.7, 5.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])  # prompt column, three tokens, padding
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[0.0, 1.5, 1.5, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(advantages, returns - values * mask, atol=1e-6)


def test_whiten_uses_only_masked_entries():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(whiten(values, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)


def test_compute_advantages_per_algorithm():
    scores = torch.tensor([1.0, 3.0])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    grpo, none = compute_advantages("grpo", scores, mask, group_size=2)
    assert none is None
    assert torch.allclose(grpo, torch.tensor([[0.0, -1.0, -1.0], [0.0, 1.0, 0.0]]), atol=1e-5)
    rloo, _ = compute_advantages("rloo", scores, mask, group_size=2)
    assert torch.allclose(rloo, torch.tensor([[0.0, -2.0, -2.0], [0.0, 2.0, 0.0]]))
    # the KL penalty in the reward lowers a sample's sequence reward by its summed penalty
    penalty = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    rloo_kl, _ = compute_advantages("rloo", scores, mask, group_size=2, kl_penalty=penalty)
    assert torch.allclose(rloo_kl, torch.tensor([[0.0, -4.0, -4.0], [0.0, 4.0, 0.0]]))
    # reinforce++: returns-to-go [1, 1] and [3], whitened over the three tokens
    rpp, _ = compute_advantages("reinforce_pp", scores, mask, group_size=2)
    mean, std = 5.0 / 3.0, math.sqrt(((1 - 5 / 3) ** 2 * 2 + (3 - 5 / 3) ** 2) / 3)
    expected = torch.tensor([[0.0, (1 - mean) / std, (1 - mean) / std], [0.0, (3 - mean) / std, 0.0]])
    assert torch.allclose(rpp, expected, atol=1e-4)
    # ppo: GAE over the critic's values, whitened; returns are the critic's targets
    values = torch.tensor([[9.0, 0.5, 0.5], [9.0, 1.0, 9.0]])
    ppo, returns = compute_advantages("ppo", scores, mask, group_size=2, values=values, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[0.0, 1.0, 1.0], [0.0, 3.0, 0.0]]))
    raw = torch.tensor([[0.0, 0.5, 0.5], [0.0, 2.0, 0.0]])
    assert torch.allclose(ppo, whiten(raw, mask), atol=1e-5)
    with pytest.raises(ValueError, match="critic"):
        compute_advantages("ppo", scores, mask, group_size=2)
    with pytest.raises(ValueError, match="unknown algorithm"):
        compute_advantages("dpo", scores, mask, group_size=2)


# ---- losses ------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    # k3 = e^(ref - logp) - (ref - logp) - 1 = e^-1 + 1 - 1
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1.0))
    assert kl_estimate(ref, logp, "k1").item() == pytest.approx(-1.0)  # k1 can be negative per token
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k2")


def test_entropy_by_hand():
    uniform = torch.zeros(1, 1, 4)
    assert token_entropy(uniform, 1.0).item() == pytest.approx(math.log(4))
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    logp, entropy = logprobs_and_entropy(logits, torch.tensor([[1]]), 1.0)
    assert logp.item() == pytest.approx(math.log(0.75))
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_truncated_importance_weights():
    old = torch.tensor([-1.0, -1.0, -1.0])
    behaviour = torch.tensor([-2.0, -1.0, -0.5])  # ratios e^1, 1, e^-0.5
    weights = importance_weights(old, behaviour, cap=2.0)
    assert torch.allclose(weights, torch.tensor([2.0, 1.0, math.exp(-0.5)]))
    assert not weights.requires_grad


def test_policy_loss_with_importance_weights_by_hand():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    terms = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0]), 0.2, torch.tensor([[2.0, 0.5]]))
    # ratio 1: loss = -A * w per token
    assert torch.allclose(terms.loss, torch.tensor([[-4.0, -1.0]]))
    terms.loss.sum().backward()
    # d/dlogp of -A w exp(logp - old) at ratio 1 = -A w
    assert torch.allclose(logp.grad, torch.tensor([[-4.0, -1.0]]))


def test_token_level_advantages_and_clipping_direction():
    logp = torch.tensor([[0.5, -0.5]], requires_grad=True)  # ratios e^0.5 (above 1.2), e^-0.5 (below 0.8)
    advantages = torch.tensor([[1.0, -1.0]])
    terms = clipped_policy_loss(logp, torch.zeros(1, 2), advantages, 0.2)
    # token 0: A > 0 and ratio above range -> clipped to 1.2; token 1: A < 0, ratio below range -> clipped to 0.8
    assert torch.allclose(terms.loss, torch.tensor([[-1.2, 0.8]]))
    assert torch.equal(terms.clipped, torch.tensor([[1.0, 1.0]]))
    terms.loss.sum().backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2))  # clipped terms carry no gradient


def test_value_loss_by_hand():
    # clipped prediction 0.5 + 0.2 = 0.7 is further from the return: max picks it
    loss = clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.7 - 2.0) ** 2)
    # the unclipped error is larger: 0.5 * (1 - 0)^2 vs 0.5 * (0.7 - 0)^2
    loss = clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.0]), 0.2)
    assert loss.item() == pytest.approx(0.5)


# ---- KL control -------------------------------------------------------------------


def test_adaptive_kl_controller_moves_towards_the_target():
    controller = KLController(0.05, target=0.1, horizon=1000)
    # KL twice the target: error clipped to +0.2, beta *= 1 + 0.2 * 100 / 1000
    assert controller.update(0.2, 100) == pytest.approx(0.05 * 1.02)
    # KL at half the target: error -0.5 clipped to -0.2
    assert controller.update(0.05, 100) == pytest.approx(0.05 * 1.02 * 0.98)
    # slightly above: e = 0.1 unclipped
    before = controller.value
    assert controller.update(0.11, 1000) == pytest.approx(before * 1.1)
    restored = KLController(0.05, target=0.1, horizon=1000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_fixed_kl_controller_stays_fixed():
    controller = KLController(0.05)
    assert controller.update(10.0, 1000) == 0.05


# ---- rewards ---------------------------------------------------------------------------


def test_ensemble_combinations_by_hand():
    scores = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # two models, two samples
    assert torch.allclose(combine(scores, "mean"), torch.tensor([2.0, 0.0]))
    assert torch.allclose(combine(scores, "min"), torch.tensor([1.0, 0.0]))
    # std across models (population): 1 and 0
    assert torch.allclose(combine(scores, "mean_minus_std", k=2.0), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError):
        combine(scores, "max")


def test_running_moments_match_the_concatenation():
    moments = RunningMoments()
    parts = [torch.tensor([1.0, 2.0]), torch.tensor([10.0]), torch.tensor([-3.0, 4.0, 0.5])]
    for part in parts:
        moments.update(part)
    everything = torch.cat(parts).double()
    assert moments.count == 6
    assert moments.mean == pytest.approx(float(everything.mean()))
    assert moments.std == pytest.approx(float(everything.std(unbiased=False)))


def test_reward_processor_normalizes_per_model_then_combines_and_clips():
    processor = RewardProcessor(("a", "b"), "mean", normalize="batch", clip=0.5)
    # each model standardized over the batch: a -> [-1, 1], b -> [1, -1] -> mean 0
    out = processor({"a": torch.tensor([0.0, 10.0]), "b": torch.tensor([5.0, 4.0])})
    assert torch.allclose(out, torch.zeros(2), atol=1e-5)
    clipped = RewardProcessor(("a",), "mean", clip=0.5)({"a": torch.tensor([-3.0, 0.2, 3.0])})
    assert torch.allclose(clipped, torch.tensor([-0.5, 0.2, 0.5]))
    with pytest.raises(ValueError, match="missing"):
        processor({"a": torch.zeros(2)})
    running = RewardProcessor(("a",), normalize="running")
    running({"a": torch.tensor([0.0, 2.0])})
    restored = RewardProcessor(("a",), normalize="running")
    restored.load_state_dict(running.state_dict())
    # after restoring, the next batch is normalized with the same statistics
    assert torch.equal(restored({"a": torch.tensor([4.0])}), running({"a": torch.tensor([4.0])}))
