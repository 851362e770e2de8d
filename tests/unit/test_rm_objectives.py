"""Reward-model objectives and the comparisons held-out accuracy is computed over."""

from __future__ import annotations

import math

import pytest
import torch

from services.reward.training.preferences import PairwisePreference, RankedPreference, Rating
from services.reward.training.trainer import (
    RewardTrainingConfig,
    all_pairs_loss,
    bradley_terry_loss,
    comparisons,
    next_version_dir,
    plackett_luce_loss,
    record_losses,
    texts_of,
)


def test_bradley_terry_is_minus_log_sigmoid_of_the_margin_adjusted_gap():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.tolist() == pytest.approx([-math.log(1 / (1 + math.exp(-1))), -math.log(1 / (1 + math.exp(1)))])


def test_plackett_luce_with_two_items_is_bradley_terry_and_prefers_the_right_order():
    scores = torch.tensor([1.5, -0.5])
    assert plackett_luce_loss(scores).item() == pytest.approx(bradley_terry_loss(scores[0], scores[1]).item())
    right, wrong = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])
    assert plackett_luce_loss(right) < plackett_luce_loss(wrong)
    # By hand: mean of [-log softmax([3,2,1])[0], -log softmax([2,1])[0]].
    expected = (math.log(math.exp(3) + math.exp(2) + math.exp(1)) - 3 + math.log(math.exp(2) + math.exp(1)) - 2) / 2
    assert plackett_luce_loss(right).item() == pytest.approx(expected)


def test_all_pairs_averages_bradley_terry_over_ordered_pairs():
    scores = torch.tensor([3.0, 2.0, 0.0])
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(bradley_terry_loss(scores[i], scores[j]).item() for i, j in pairs) / 3
    assert all_pairs_loss(scores).item() == pytest.approx(expected)


def test_gradients_push_chosen_up_and_rejected_down():
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


def test_record_losses_per_form_and_centering():
    records = [
        PairwisePreference("p", "a", "b", margin=0.5),
        RankedPreference("p", ("a", "b", "c")),
        Rating("p", "a", 4.0),
    ]
    scores = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0, 0.0]), torch.tensor([3.0])]
    plain = record_losses(records, scores, RewardTrainingConfig())
    assert plain[0].item() == pytest.approx(bradley_terry_loss(torch.tensor(1.0), torch.tensor(1.0), 0.5).item())
    assert plain[1].item() == pytest.approx(plackett_luce_loss(scores[1]).item())
    assert plain[2].item() == pytest.approx(1.0)
    centered = record_losses(records, scores, RewardTrainingConfig(center_rewards_coefficient=0.01))
    assert centered[0].item() == pytest.approx(plain[0].item() + 0.01 * 4.0)
    all_pairs = record_losses(records, scores, RewardTrainingConfig(ranking_loss="all-pairs"))
    assert all_pairs[1].item() == pytest.approx(all_pairs_loss(scores[1]).item())


def test_comparisons_implied_by_each_form():
    records = [
        PairwisePreference("p", "good", "bad"),
        RankedPreference("q", ("x", "y", "z")),
        Rating("r", "r1", 9.0),
        Rating("r", "r2", 3.0),
        Rating("r", "r3", 3.0),
        Rating("s", "s1", 1.0),
    ]
    assert comparisons(records) == [
        ("p", "good", "bad"),
        ("q", "x", "y"),
        ("q", "x", "z"),
        ("q", "y", "z"),
        ("r", "r1", "r2"),
        ("r", "r1", "r3"),
    ]
    assert texts_of(records[1]) == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranking_loss": "listnet"}, "ranking_loss must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"publish_address": "localhost:1"}, "publish_address and publish_model go together"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardTrainingConfig(**kwargs)


def test_version_directories_count_up(tmp_path):
    assert next_version_dir(tmp_path).name == "v0001"
    (tmp_path / "v0001").mkdir()
    (tmp_path / "v0007").mkdir()
    (tmp_path / ".v0008.partial").mkdir()
    assert next_version_dir(tmp_path).name == "v0008"
