"""What the online loop trains on: live prompts with replay, and the denoised preference pairs."""

from __future__ import annotations

import random

import pytest

from rlhf.v1 import feedback_pb2 as fb
from services.common.sections import Sampling
from services.online.config import OnlineConfig
from services.online.prompts import LivePrompt, PromptPool
from services.online.reward_refresh import PreferenceBook


def prompt(i: int) -> LivePrompt:
    return LivePrompt(f"prompt {i}", (i, i + 1))


def test_pool_keeps_the_newest_capacity_prompts_in_order_of_last_sight():
    pool = PromptPool(capacity=3, live_window=2)
    for i in (1, 2, 3, 1, 4):  # 1 is seen again: it becomes recent, 2 falls out
        pool.add(prompt(i))
    assert len(pool) == 3
    assert [p.text for p in pool._prompts.values()] == ["prompt 3", "prompt 1", "prompt 4"]


def test_draws_mix_live_prompts_with_replay():
    pool = PromptPool(capacity=100, live_window=4)
    for i in range(20):
        pool.add(prompt(i))
    rng = random.Random(0)
    live = {f"prompt {i}" for i in range(16, 20)}
    draws = [pool.draw(4, 0.5, rng) for _ in range(200)]
    assert all(len(d) == 4 and sum(p.text in live for p in d) == 2 for d in draws)
    assert {p.text for d in draws for p in d} - live  # older prompts are replayed
    assert all(p.text in live for p in pool.draw(4, 1.0, rng))
    small = PromptPool(capacity=10, live_window=4)
    small.add(prompt(0))
    assert [p.text for p in small.draw(3, 0.5, rng)] == ["prompt 0"] * 3
    with pytest.raises(ValueError):
        PromptPool().draw(1, 0.5, rng)


def test_pool_ingests_store_pages_and_round_trips_its_state():
    pool = PromptPool()
    pool.ingest(
        fb.ListPromptsResponse(
            prompts=[
                fb.LivePrompt(prompt_text="a", prompt_token_ids=[1, 2]),
                fb.LivePrompt(prompt_text="", prompt_token_ids=[3]),
            ],
            next_cursor=12,
        )
    )
    assert len(pool) == 1 and pool.cursor == 12  # a prompt never decoded to text cannot be scored: skipped
    restored = PromptPool()
    restored.load_state_dict(pool.state_dict())
    assert restored.cursor == 12 and restored.draw(1, 0.5, random.Random(0)) == [LivePrompt("a", (1, 2))]


def pair(pair_id: str, agreement: float = 1.0, chosen: str = "good") -> fb.PreferencePair:
    return fb.PreferencePair(
        pair_id=pair_id, prompt_text="p", chosen_text=chosen, rejected_text="bad", weight=1.0, agreement=agreement
    )


def test_preference_book_replaces_updated_pairs_and_drops_doubtful_ones():
    book = PreferenceBook(min_agreement=0.6)
    book.ingest(fb.ListPreferencesResponse(pairs=[pair("x"), pair("y"), pair("z", agreement=0.55)], next_cursor=5))
    assert set(book.pairs) == {"x", "y"} and book.fresh == {"x", "y"}
    book.fresh.clear()  # trained on them
    book.ingest(fb.ListPreferencesResponse(pairs=[pair("x", chosen="better"), pair("y", agreement=0.5)], next_cursor=9))
    assert set(book.pairs) == {"x"} and book.pairs["x"]["chosen"] == "better" and book.fresh == {"x"}
    book.ingest(fb.ListPreferencesResponse(pairs=[pair("w")], next_cursor=11))
    training = book.training_set(replay=0, rng=random.Random(0))
    assert sorted(r["chosen"] for r in training) == ["better", "good"]
    restored = PreferenceBook()
    restored.load_state_dict(book.state_dict())
    assert restored.pairs == book.pairs and restored.fresh == book.fresh and restored.cursor == 11


def test_online_config_checks_the_lag_against_the_round_length():
    with pytest.raises(ValueError, match="max_version_lag"):
        OnlineConfig(steps_per_round=3, max_version_lag=1)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        OnlineConfig(sampling=Sampling(samples_per_prompt=1))  # grpo, the trainer's check
    assert OnlineConfig(steps_per_round=3, max_version_lag=2).canary.alpha == 0.05
