import math

import pytest
import torch

from services.trainer.grpo import clipped_loss, group_advantages, kl_k3, token_logprobs


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])
    adv = group_advantages(rewards, group_size=2, eps=0.0 + 1e-12)
    # group 1: mean 2, std 1 -> [-1, 1]; group 2: all equal -> zeros
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3), 2)


def test_token_logprobs_uses_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    tokens = torch.tensor([[1]])
    assert torch.allclose(token_logprobs(logits, tokens, 1.0), torch.tensor([[math.log(0.75)]]))
    # T=2 halves the logit gap: p = sqrt(3) / (1 + sqrt(3))
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    assert torch.allclose(token_logprobs(logits, tokens, 2.0), torch.tensor([[expected]]), atol=1e-6)


def test_kl_k3_zero_when_equal_positive_otherwise():
    logp = torch.tensor([-1.0, -2.0])
    assert torch.allclose(kl_k3(logp, logp), torch.zeros(2))
    assert (kl_k3(logp, logp + 0.3) > 0).all() and (kl_k3(logp, logp - 0.3) > 0).all()


def test_loss_has_a_gradient_path_to_the_policy():
    """The seed article's loss was built from detached values; ours must move the policy."""
    logits = torch.randn(2, 3, 5, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3))
    logp = token_logprobs(logits, tokens, 1.0)
    old = logp.detach() + 0.01
    parts = clipped_loss(logp, old, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3), 0.2, 0.1)
    parts.loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # positive advantage -> gradient descent raises the sampled tokens' logprob
    step = logits - 0.5 * logits.grad
    assert (token_logprobs(step, tokens, 1.0)[0] > logp[0]).all()


def test_clipping_by_hand():
    # ratio e^0.5 ~ 1.65 > 1.2 with positive advantage: clipped to 1.2 * A, no gradient
    logp = torch.tensor([[0.5]], requires_grad=True)
    parts = clipped_loss(
        logp, torch.zeros(1, 1), torch.tensor([[0.5]]), torch.tensor([2.0]), torch.ones(1, 1), 0.2, 0.0
    )
    assert parts.loss.item() == pytest.approx(-1.2 * 2.0)
    assert parts.clip_fraction == 1.0
    parts.loss.backward()
    assert logp.grad.abs().item() == 0.0
    # with a negative advantage the unclipped (worse) term is taken: -(1.65 * -2)
    logp2 = torch.tensor([[0.5]], requires_grad=True)
    parts = clipped_loss(
        logp2, torch.zeros(1, 1), torch.tensor([[0.5]]), torch.tensor([-2.0]), torch.ones(1, 1), 0.2, 0.0
    )
    assert parts.loss.item() == pytest.approx(math.exp(0.5) * 2.0, rel=1e-5)


def test_mask_excludes_padding():
    logp = torch.tensor([[-1.0, -50.0]])
    parts = clipped_loss(logp, logp, logp, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), 0.2, 0.0)
    assert parts.loss.item() == pytest.approx(-1.0)
