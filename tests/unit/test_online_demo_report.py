"""What the online demo reports: utility intervals per version, the gain's interval, reward-model accuracy, held-out pairs."""

from __future__ import annotations

import random
import threading

import pytest

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import reward_pb2
from services.online import demo_report
from services.online.canary import Stopped
from services.online.demo import DemoRounds, OnlineDemoConfig, bad_weights
from services.online.reward_refresh import PreferenceBook
from services.reward.training.simulated_preference import (
    HiddenPreference,
    PreferenceSpec,
)

PROMPT = "Write a short review of Pride and Prejudice by Jane Austen."


def tally(values: list[float]) -> dict:
    return {
        "samples": len(values),
        "mean_hidden_utility": sum(values) / len(values),
        "hidden_utility_sq_sum": sum(v * v for v in values),
    }


def test_utility_by_version_merges_replicas_and_gives_a_normal_interval():
    rng = random.Random(0)
    low = [rng.gauss(0.5, 0.1) for _ in range(400)]
    high = [rng.gauss(0.6, 0.1) for _ in range(400)]
    rows = demo_report.utility_by_version(
        {"stable:v0": tally(low[:300]), "canary:v0": tally(low[300:]), "stable:v3": tally(high)}
    )
    assert [r["version"] for r in rows] == [0, 3] and rows[0]["n"] == 400
    assert rows[0]["ci_low"] < 0.5 < rows[0]["ci_high"] and rows[0]["ci_high"] - rows[0]["ci_low"] == pytest.approx(
        2 * 1.96 * 0.1 / 20, rel=0.15
    )
    gain = demo_report.difference(rows[1], rows[0])
    assert gain["ci_low"] > 0.07 and gain["ci_high"] < 0.13 and (gain["n_from"], gain["n_to"]) == (400, 400)


class Scorer:
    """A reward model that likes length: score = number of words."""

    def score(self, model, items):
        return reward_pb2.ScoreResponse(scores=[len(i.completion.split()) for i in items])


def test_reward_model_accuracy_against_the_hidden_preference_and_gold():
    preference = HiddenPreference(PreferenceSpec(target_words=10, title_weight=0, diversity_weight=0))

    def words(n):
        return " ".join(f"w{i}" for i in range(n))

    pairs = [
        {"prompt": PROMPT, "chosen": words(9), "rejected": words(3)},  # both agree: longer is better here
        {"prompt": PROMPT, "chosen": words(10), "rejected": words(30)},  # the model prefers the too-long one
        {"prompt": PROMPT, "chosen": words(8), "rejected": words(7)},  # right, but not a clear case (gap 0.1 < 0.2)
    ]
    result = demo_report.reward_model_accuracy(Scorer(), "m", pairs, preference, gold_min_gap=0.2)
    assert result["hidden_accuracy"] == pytest.approx(2 / 3, abs=1e-4) and result["hidden_pairs"] == 3
    assert result["gold_agreement"] == 0.5 and result["gold_pairs"] == 2
    assert result["rater_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert demo_report.reward_model_accuracy(Scorer(), "m", [], preference, 0.1)["hidden_accuracy"] is None


def test_preference_book_keeps_a_fixed_share_of_pairs_out_of_training():
    book = PreferenceBook(heldout_share=0.25)
    pairs = [
        fb.PreferencePair(
            pair_id=f"p{i}", prompt_text="q", chosen_text="a", rejected_text="b", weight=1.0, agreement=1.0
        )
        for i in range(400)
    ]
    book.ingest(fb.ListPreferencesResponse(pairs=pairs, next_cursor=1))
    assert 70 < len(book.heldout) < 130 and len(book.heldout) + len(book.pairs) == 400
    assert not set(book.heldout) & set(book.pairs) and not set(book.heldout) & book.fresh
    again = PreferenceBook(heldout_share=0.25)
    again.load_state_dict(book.state_dict())
    again.ingest(fb.ListPreferencesResponse(pairs=pairs[:50], next_cursor=2))  # the same pairs land on the same side
    assert set(again.heldout) == set(book.heldout)
    with pytest.raises(ValueError):
        PreferenceBook(heldout_share=1.0)


def test_the_bad_candidate_keeps_shapes_but_says_one_token():
    import torch

    tensors = [
        ("model.embed_tokens.weight", torch.randn(8, 4)),
        ("model.layers.0.self_attn.o_proj.weight", torch.randn(4, 4)),
        ("model.norm.weight", torch.randn(4)),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 4)),
    ]
    bad = dict(bad_weights(tensors, token_id=5))
    assert all(bad[name].shape == tensor.shape for name, tensor in tensors)
    assert bad["model.layers.0.self_attn.o_proj.weight"].abs().sum() == 0 and bool(
        (bad["model.norm.weight"] == 1).all()
    )
    assert bad["model.embed_tokens.weight"].norm(dim=1).argmax() == 5
    assert torch.equal(bad["model.layers.0.self_attn.q_proj.weight"], tensors[3][1])


class _StoppedTrainer:
    """A trainer whose round refreshes the reward model, then is stopped by the demo's hard stop mid-canary."""

    def __init__(self) -> None:
        self.round, self.last_reward_model = 1, None
        self.rollout = type("Rollout", (), {"halted": ""})()
        self.book = PreferenceBook(0.6)
        self.config = type("Config", (), {"idle_s": 0.0, "rewards": type("Rewards", (), {"model": "online-rm"})()})()

    def sync_replicas(self) -> None:
        pass

    def run_round(self, stop):
        self.last_reward_model = {"version": "rm-2", "pairs": 128, "heldout_accuracy": 0.7}
        raise Stopped("stopped while judging version 3")


def test_a_stopped_rounds_reward_model_refresh_is_still_checked():
    rounds = DemoRounds(OnlineDemoConfig(duration_s=30.0), _StoppedTrainer(), scorer=None)
    rounds.run(threading.Event())
    (row,) = rounds.accuracy
    assert (row["round"], row["reward_model_version"], row["trained_pairs"]) == (2, "rm-2", 128)
    assert row["pairs"] == 0 and rounds.rounds == []  # no held-out pairs yet: nothing scored, and no round record
