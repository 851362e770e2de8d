"""The simulated users: hidden preference, rater noise and adversaries, canary routing, loopback guard."""

from __future__ import annotations

import random

import pytest

from services.common.client import require_loopback
from services.online.routing import CANARY, STABLE, CanaryRouter
from services.online.simulator import SimulatorConfig, make_users
from services.reward.training.simulated_preference import (
    HiddenPreference,
    PreferenceSpec,
    Rater,
    title_words,
)

PROMPT = "Write a short review of Pride and Prejudice by Jane Austen."


def test_hidden_preference_likes_the_title_the_target_length_and_variety():
    preference = HiddenPreference(PreferenceSpec(target_words=10))
    assert title_words(PROMPT) == {"pride", "prejudice"}
    good = "Pride and Prejudice sparkles with wit, irony, warmth; a heroine worth knowing."
    terms = preference.terms(PROMPT, good)
    assert terms["title"] == 1.0 and terms["diversity"] == 1.0 and terms["length"] == pytest.approx(0.8)
    assert preference.utility(PROMPT, good) > preference.utility(
        PROMPT, "A novel with wit, irony and a heroine worth knowing."
    )
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


class _Reply:
    def __init__(self, response):
        self.response = response

    def result(self):
        return self.response


class _FakePolicy:
    """Answers Generate.future with `n` samples of one weight version (no engine)."""

    def __init__(self, version: int, text: str) -> None:
        self.version, self.text, self.calls = version, text, 0
        self.Generate = self

    def future(self, request, timeout=None):
        from rlhf.v1 import policy_pb2

        self.calls += 1
        samples = [
            policy_pb2.Sample(
                sample_id=f"v{self.version}-{self.calls}-{i}", text=f"{self.text} {i}", weight_version=self.version
            )
            for i in range(request.sampling.n)
        ]
        return _Reply(policy_pb2.GenerateResponse(results=[policy_pb2.PromptResult(samples=samples)]))


class _FakeFeedback:
    def __init__(self) -> None:
        self.pairs: list = []
        self.SubmitFeedback = self.SubmitGoldFeedback = self.submit

    def submit(self, request, timeout=None):
        from rlhf.v1 import feedback_pb2

        if request.body.HasField("pairwise"):
            self.pairs.append(request.body.pairwise)
        return feedback_pb2.SubmitFeedbackResponse(feedback_id=f"f{len(self.pairs)}")


def test_canary_users_judge_interleaved_stable_vs_canary_pairs(tmp_path):
    from services.online.simulator import TrafficSimulator

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write a short review of Pride and Prejudice by Jane Austen."}\n')
    config = SimulatorConfig(
        canary_address="127.0.0.1:2",
        canary_fraction=1.0,
        users=10,
        prompts_file=str(prompts),
        interleave_probability=1.0,
        pairwise_probability=1.0,
        gold_probability=0.0,
        rating_probability=0.0,
        think_time_s=0.0,
    )
    simulator = TrafficSimulator(config)
    feedback = _FakeFeedback()
    simulator._policy = {STABLE: _FakePolicy(3, "Pride and Prejudice is witty"), CANARY: _FakePolicy(8, "book book")}
    simulator._feedback = dict.fromkeys((STABLE, CANARY), feedback)
    rng = random.Random(0)
    for index in range(40):
        simulator._request(index, simulator.users[index % 10], simulator.rows[0], rng)
    simulator.close()
    assert simulator._policy[STABLE].calls == simulator._policy[CANARY].calls == 40  # one completion from each
    assert len(feedback.pairs) == 40
    versions = [(p.chosen_sample_id.split("-")[0], p.rejected_sample_id.split("-")[0]) for p in feedback.pairs]
    assert all({a, b} == {"v3", "v8"} for a, b in versions)  # every pair puts the two versions side by side
    summary = simulator.summary(1.0, 40)
    assert summary["judgements"] == {"v3-v8": 40} and summary["judgements_per_version"] == {"v3": 40, "v8": 40}
    assert summary["by_replica_version"]["stable:v3"]["samples"] == 40
