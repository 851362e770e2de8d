"""The rollout decision, the per-version quality it reads, and durable version numbers."""

from __future__ import annotations

import pytest

from rlhf.v1 import feedback_pb2 as fb
from services.online.canary import PROMOTE, ROLLBACK, WAIT, CanarySettings, judge
from services.online.quality import VersionQuality, VersionStats
from services.online.versions import VersionAllocator

SETTINGS = CanarySettings(min_ratings=10, margin=0.05, window_s=60)


@pytest.mark.parametrize(
    ("candidate", "baseline", "window_over", "action"),
    [
        (VersionStats(2, 10, 0.70), VersionStats(1, 50, 0.72), False, PROMOTE),  # within the margin
        (VersionStats(2, 10, 0.90), VersionStats(1, 50, 0.50), False, PROMOTE),
        (VersionStats(2, 10, 0.60), VersionStats(1, 50, 0.72), False, ROLLBACK),
        (VersionStats(2, 9, 0.10), VersionStats(1, 50, 0.72), False, WAIT),  # not enough ratings yet
        (VersionStats(2, 10, 0.90), VersionStats(1, 9, 0.10), False, WAIT),
        (VersionStats(2, 3, 0.90), VersionStats(1, 50, 0.72), True, ROLLBACK),  # inconclusive: conservative
    ],
)
def test_judge(candidate, baseline, window_over, action):
    verdict = judge(candidate, baseline, SETTINGS, window_over)
    assert verdict.action == action, verdict.reason


def test_inconclusive_outcome_is_configurable():
    settings = CanarySettings(min_ratings=10, on_inconclusive=PROMOTE)
    verdict = judge(VersionStats(2, 0, None), VersionStats(1, 0, None), settings, window_over=True)
    assert verdict.action == PROMOTE and "inconclusive" in verdict.reason
    with pytest.raises(ValueError):
        CanarySettings(on_inconclusive="maybe")


def rating(sample_id: str, version: int, score: float) -> fb.SampleRating:
    return fb.SampleRating(sample_id=sample_id, weight_version=version, score=score)


def rated_by(rater: str, sample_id: str, gold: bool = False) -> fb.FeedbackRecord:
    return fb.FeedbackRecord(rater_id=rater, gold=gold, body=fb.FeedbackBody(rating=fb.Rating(sample_id=sample_id, value=3)))


def test_quality_keeps_the_latest_score_per_sample_and_averages_per_version():
    quality = VersionQuality()
    quality.ingest(fb.ListRatingsResponse(ratings=[rating("a", 1, 0.0), rating("b", 1, 1.0), rating("c", 2, 0.5)], next_cursor=7))
    quality.ingest(fb.ListRatingsResponse(ratings=[rating("a", 1, 1.0)], next_cursor=9))  # "a" got more ratings
    assert quality.stats(1) == VersionStats(1, 2, 1.0)
    assert quality.stats(2) == VersionStats(2, 1, 0.5)
    assert quality.stats(3) == VersionStats(3, 0, None)
    assert quality.cursor == 9


def test_paired_comparison_counts_only_raters_who_rated_both_versions():
    quality = VersionQuality()
    # "harsh" rates everything low and only saw the candidate (2) on the canary, besides one baseline (1) sample;
    # "kind" rates everything high and only saw the baseline: unpaired, the candidate would look far worse.
    quality.ingest(fb.ListRatingsResponse(ratings=[
        rating("h1", 1, 0.25), rating("h2", 2, 0.25), rating("h3", 2, 0.25),
        rating("k1", 1, 1.0), rating("k2", 1, 1.0), rating("k3", 1, 1.0), rating("g1", 2, 0.5),
    ], next_cursor=10))
    quality.ingest_raters(fb.ExportFeedbackResponse(records=[
        rated_by("harsh", "h1"), rated_by("harsh", "h2"), rated_by("harsh", "h3"),
        rated_by("kind", "k1"), rated_by("kind", "k2"), rated_by("kind", "k3"), rated_by("expert", "g1", gold=True),
    ], next_cursor=11))
    assert quality.stats(2).mean < quality.stats(1).mean - 0.4
    candidate, baseline = quality.paired(2, 1)
    assert (candidate.raters, candidate.samples, baseline.samples) == (1, 2, 1)
    assert candidate.mean == baseline.mean == 0.25
    assert quality.paired(2, 7) == (VersionStats(2, 0, None, 0), VersionStats(7, 0, None, 0))
    restored = VersionQuality()
    restored.load_state_dict(quality.state_dict())
    assert restored.paired(2, 1) == quality.paired(2, 1) and (restored.cursor, restored.export_cursor) == (10, 11)


def test_version_numbers_survive_a_restart_and_respect_what_replicas_used(tmp_path):
    path = tmp_path / "versions.json"
    first = VersionAllocator(path)
    assert first.allocate() == 1 and first.allocate() == 2
    first.observe(5)  # a replica has applied up to 5
    first.observe(3)
    assert VersionAllocator(path).allocate() == 6  # a restarted loop never hands out 1..5 again
    assert not path.with_suffix(".partial").exists()


class FakeReplica:
    """Records the admin calls SafeRollout makes (the real RPCs are covered by tests/integration/test_online_loop.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def push(self, tensors, version, note):
        self.calls.append(("push", version, len(tensors)))

    def rollback(self, version, reason):
        self.calls.append(("rollback", version))


class FakeReader:
    """Serves ratings for the candidate as given; the baseline is rated 0.9 by the same raters."""

    def __init__(self, candidate_score: float) -> None:
        self.candidate_score, self.served = candidate_score, False

    def rating_records(self, since):
        ids = [f"{v}-{i}" for v in ("c", "b") for i in range(12)]
        yield fb.ExportFeedbackResponse(records=[rated_by(f"user-{i % 4}", s) for i, s in enumerate(ids)], next_cursor=1)

    def ratings(self, since):
        yield fb.ListRatingsResponse(ratings=[rating(f"c-{i}", 8, self.candidate_score) for i in range(12)]
                                     + [rating(f"b-{i}", 3, 0.9) for i in range(12)], next_cursor=1)


@pytest.mark.parametrize(("score", "action"), [(0.2, ROLLBACK), (0.88, PROMOTE)])
def test_safe_rollout_rolls_the_canary_back_or_promotes_the_same_weights(tmp_path, score, action):
    from services.online.canary import SafeRollout

    stable, canary = FakeReplica(), FakeReplica()
    versions = VersionAllocator(tmp_path / "versions.json")
    versions.observe(7)
    rollout = SafeRollout(stable, canary, VersionQuality(), FakeReader(score), versions, SETTINGS)
    decision = rollout.deploy([("w", None)] * 3, "note", baseline=3)
    assert decision.action == action and decision.candidate_version == 8
    assert canary.calls[0] == ("push", 8, 3)
    if action == ROLLBACK:
        assert canary.calls[1:] == [("rollback", 3)] and stable.calls == []
    else:
        assert canary.calls[1:] == [] and stable.calls == [("push", 8, 3)]
