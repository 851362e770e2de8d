"""The simulated users: hidden preference, rater noise and adversaries, canary routing, loopback guard."""

from __future__ import annotations

import random

import pytest

from services.online.clients import require_loopback
from services.online.preference import HiddenPreference, PreferenceSpec, Rater, title_words
from services.online.routing import CANARY, STABLE, CanaryRouter
from services.online.simulator import SimulatorConfig, make_users

PROMPT = "Write a short review of Pride and Prejudice by Jane Austen."


def test_hidden_preference_likes_the_title_the_target_length_and_variety():
    preference = HiddenPreference(PreferenceSpec(target_words=10))
    assert title_words(PROMPT) == {"pride", "prejudice"}
    good = "Pride and Prejudice sparkles with wit, irony, warmth; a heroine worth knowing."
    terms = preference.terms(PROMPT, good)
    assert terms["title"] == 1.0 and terms["diversity"] == 1.0 and terms["length"] == pytest.approx(0.8)
    assert preference.utility(PROMPT, good) > preference.utility(PROMPT, "A novel with wit, irony and a heroine worth knowing.")
    assert preference.utility(PROMPT, "book " * 12) < 0.4  # one word repeated
    assert preference.utility(PROMPT, "") == 0.0
    assert title_words("Tell me anything.") == set()


def test_noise_free_raters_are_consistent_and_adversaries_mirror_them():
    rng = random.Random(0)
    honest, adversary = Rater("h", noise=0.0), Rater("a", noise=0.0, adversarial=True)
    assert [honest.rating(u, rng) for u in (0.0, 0.5, 1.0)] == [1, 3, 5]
    assert [adversary.rating(u, rng) for u in (0.0, 0.5, 1.0)] == [5, 3, 1]
    assert honest.prefers_first(0.9, 0.1, rng) and not adversary.prefers_first(0.9, 0.1, rng)


def test_noisy_raters_err_more_on_close_calls():
    rng = random.Random(1)
    rater = Rater("n", noise=0.1)
    close = sum(rater.prefers_first(0.55, 0.5, rng) for _ in range(2000)) / 2000
    clear = sum(rater.prefers_first(0.9, 0.5, rng) for _ in range(2000)) / 2000
    assert 0.55 < close < 0.75 and clear > 0.99


def test_canary_router_is_sticky_and_splits_users_by_the_fraction():
    router = CanaryRouter(0.2)
    users = [f"user-{i}" for i in range(5000)]
    routes = [router.route(u) for u in users]
    assert routes == [router.route(u) for u in users]
    assert 0.18 < routes.count(CANARY) / len(users) < 0.22
    assert {CanaryRouter(0.0).route(u) for u in users[:100]} == {STABLE}
    assert {CanaryRouter(1.0).route(u) for u in users[:100]} == {CANARY}
    with pytest.raises(ValueError):
        CanaryRouter(1.5)


def test_users_get_the_configured_share_of_adversaries_and_canary():
    config = SimulatorConfig(canary_address="127.0.0.1:1", canary_fraction=0.5, users=200, adversarial_fraction=0.1)
    users = make_users(config)
    assert sum(u.rater.adversarial for u in users) == 20
    assert 70 < sum(u.replica == CANARY for u in users) < 130
    assert {u.replica for u in make_users(SimulatorConfig(users=50))} == {STABLE}  # no canary address: all stable


def test_traffic_is_bounded_and_loopback_only():
    require_loopback("127.0.0.1:50051")
    require_loopback("localhost:50051")
    require_loopback("[::1]:50051")
    with pytest.raises(ValueError, match="loopback"):
        require_loopback("8.8.8.8:50051")
    with pytest.raises(ValueError):
        SimulatorConfig(duration_s=0)
    with pytest.raises(ValueError):
        SimulatorConfig(adversarial_fraction=1.5)
