"""The reward-hacking guard: a candidate whose proxy reward rises while gold feedback falls is rolled back and RL stops."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from rlhf.v1 import feedback_pb2 as fb
from services.online.canary import PROMOTE, ROLLBACK, CanarySettings, SafeRollout
from services.online.hacking_guard import GuardSettings, RewardHackingGuard, check
from services.online.quality import VersionQuality
from services.online.versions import VersionAllocator

SETTINGS = GuardSettings()  # proxy_rise 0.05, gold surely below 0.5 at alpha 0.05, >= 10 answers


@pytest.mark.parametrize(
    ("proxy_candidate", "proxy_baseline", "gold_wins", "gold_n", "tripped"),
    [
        (0.9, 0.5, 2, 20, True),  # proxy up, gold says the candidate loses 90%: hacking
        (0.9, 0.5, 12, 20, False),  # proxy up and gold agrees: a real improvement
        (0.9, 0.5, 5, 13, False),  # gold 0.38 of 13: could be noise (the demo's first run tripped on this)
        (0.51, 0.5, 2, 20, False),  # proxy flat
        (0.4, 0.5, 2, 20, False),  # proxy down too: a plainly bad candidate, the canary's job, not hacking
        (0.9, 0.5, 0, 9, False),  # too few gold answers to say
        (None, 0.5, 2, 20, False),  # no proxy for the candidate
    ],
)
def test_check(proxy_candidate, proxy_baseline, gold_wins, gold_n, tripped):
    verdict = check(proxy_candidate, proxy_baseline, gold_wins, gold_n, SETTINGS)
    assert verdict.tripped == tripped, verdict.reason
    assert not check(0.9, 0.5, 2, 20, GuardSettings(enabled=False)).tripped
    assert check(0.9, 0.5, 40, 200, SETTINGS).tripped  # a milder loss (0.2) shows with more answers
    with pytest.raises(ValueError):
        GuardSettings(gold_drop=0.5)


class Replica:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def push(self, tensors, version, note):
        self.calls.append(("push", version))

    def rollback(self, version, reason):
        self.calls.append(("rollback", version, reason))


class Stub:
    """ExportFeedback: gold answers on candidate (8) vs baseline (3) pairs; gold prefers the baseline 18 of 20 times."""

    def ExportFeedback(self, request, timeout=None):
        records = [
            fb.FeedbackRecord(
                gold=True,
                body=fb.FeedbackBody(
                    pairwise=fb.PairwiseChoice(chosen_sample_id=f"p{i}-c", rejected_sample_id=f"p{i}-r")
                ),
            )
            for i in range(20)
        ]
        return fb.ExportFeedbackResponse(records=records, next_cursor=20, has_more=False)


class Reader:
    """The crowd prefers the candidate (8) in 150 of 200 interleaved pairs; gold answered the first 20 of them."""

    stub = Stub()

    def preferences(self, since):
        pairs = []
        for i in range(200):
            chosen, rejected = (8, 3) if i >= 50 else (3, 8)
            if i < 20:  # the pairs gold answered: gold's chosen side is p{i}-c, which is the baseline for i < 18
                chosen, rejected = (3, 8) if i < 18 else (8, 3)
            pairs.append(
                fb.PreferencePair(
                    pair_id=f"p{i}",
                    chosen_sample_id=f"p{i}-c",
                    rejected_sample_id=f"p{i}-r",
                    chosen_weight_version=chosen,
                    rejected_weight_version=rejected,
                    weight=1.0,
                )
            )
        yield fb.ListPreferencesResponse(pairs=pairs, next_cursor=200)

    def rating_records(self, since):
        yield fb.ExportFeedbackResponse(next_cursor=0)

    def ratings(self, since):
        yield fb.ListRatingsResponse(next_cursor=0)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_hacked_candidate_the_crowd_likes_is_rolled_back_and_rl_stops(tmp_path):
    stable, canary = Replica(), Replica()
    versions = VersionAllocator(tmp_path / "versions.json")
    versions.observe(7)
    rollout = SafeRollout(stable, canary, VersionQuality(), Reader(), versions, CanarySettings(poll_s=0.01))
    proxy = {8: 1.5, 3: 0.2}  # the reward model loves the candidate
    rollout.guard = RewardHackingGuard(SETTINGS, proxy.get)
    before = metric("rlhf_online_reward_hacking_detected_total")
    decision = rollout.deploy([("w", None)], "note", baseline=3)
    assert decision.test["action"] == PROMOTE  # the crowd's test alone would have promoted it
    assert decision.action == ROLLBACK and "reward-hacking guard" in decision.reason
    assert decision.guard["tripped"] and decision.guard["gold_n"] == 20
    assert canary.calls[-1][:2] == ("rollback", 3) and stable.calls == []
    assert rollout.halted.startswith("reward hacking suspected for version 8")
    assert metric("rlhf_online_reward_hacking_detected_total") == before + 1
    assert metric("rlhf_online_rl_halted") == 1.0


def test_a_candidate_whose_proxy_did_not_rise_is_not_flagged(tmp_path):
    stable, canary = Replica(), Replica()
    versions = VersionAllocator(tmp_path / "versions.json")
    versions.observe(7)
    rollout = SafeRollout(stable, canary, VersionQuality(), Reader(), versions, CanarySettings(poll_s=0.01))
    rollout.guard = RewardHackingGuard(SETTINGS, {8: 0.1, 3: 0.2}.get)  # proxy did not rise
    decision = rollout.deploy([("w", None)], "note", baseline=3)
    assert decision.action == PROMOTE and not decision.guard["tripped"] and rollout.halted == ""
    assert stable.calls == [("push", 8)]
