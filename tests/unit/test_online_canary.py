"""The rollout decision, the per-version quality it reads, and durable version numbers."""

from __future__ import annotations

import pytest

from rlhf.v1 import feedback_pb2 as fb
from services.online.canary import PROMOTE, ROLLBACK, CanarySettings
from services.online.judgements import PairedJudgements
from services.online.quality import VersionQuality, VersionStats
from services.online.versions import VersionAllocator

# The decision rule itself (promote within the tolerance or when better, roll back when worse, wait while unsure,
# a conservative and configurable outcome at the window) is tested in test_canary_sequential.py.
SETTINGS = CanarySettings(min_judgements=10, window_s=60, poll_s=0.01)


def rating(sample_id: str, version: int, score: float) -> fb.SampleRating:
    return fb.SampleRating(sample_id=sample_id, weight_version=version, score=score)


def rated_by(rater: str, sample_id: str, gold: bool = False) -> fb.FeedbackRecord:
    return fb.FeedbackRecord(
        rater_id=rater, gold=gold, body=fb.FeedbackBody(rating=fb.Rating(sample_id=sample_id, value=3))
    )


def test_quality_keeps_the_latest_score_per_sample_and_averages_per_version():
    quality = VersionQuality()
    quality.ingest(
        fb.ListRatingsResponse(ratings=[rating("a", 1, 0.0), rating("b", 1, 1.0), rating("c", 2, 0.5)], next_cursor=7)
    )
    quality.ingest(fb.ListRatingsResponse(ratings=[rating("a", 1, 1.0)], next_cursor=9))  # "a" got more ratings
    assert quality.stats(1) == VersionStats(1, 2, 1.0)
    assert quality.stats(2) == VersionStats(2, 1, 0.5)
    assert quality.stats(3) == VersionStats(3, 0, None)
    assert quality.cursor == 9


def test_paired_comparison_counts_only_raters_who_rated_both_versions():
    quality = VersionQuality()
    # "harsh" rates everything low and only saw the candidate (2) on the canary, besides one baseline (1) sample;
    # "kind" rates everything high and only saw the baseline: unpaired, the candidate would look far worse.
    quality.ingest(
        fb.ListRatingsResponse(
            ratings=[
                rating("h1", 1, 0.25),
                rating("h2", 2, 0.25),
                rating("h3", 2, 0.25),
                rating("k1", 1, 1.0),
                rating("k2", 1, 1.0),
                rating("k3", 1, 1.0),
                rating("g1", 2, 0.5),
            ],
            next_cursor=10,
        )
    )
    quality.ingest_raters(
        fb.ExportFeedbackResponse(
            records=[
                rated_by("harsh", "h1"),
                rated_by("harsh", "h2"),
                rated_by("harsh", "h3"),
                rated_by("kind", "k1"),
                rated_by("kind", "k2"),
                rated_by("kind", "k3"),
                rated_by("expert", "g1", gold=True),
            ],
            next_cursor=11,
        )
    )
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


def pair(pair_id: str, chosen: int, rejected: int, weight: float = 1.0, **extra) -> fb.PreferencePair:
    return fb.PreferencePair(
        pair_id=pair_id,
        chosen_sample_id=f"{pair_id}-c",
        rejected_sample_id=f"{pair_id}-r",
        chosen_weight_version=chosen,
        rejected_weight_version=rejected,
        weight=weight,
        **extra,
    )


def test_paired_judgements_count_cross_version_pairs_and_follow_changes():
    judgements = PairedJudgements()
    judgements.ingest(
        fb.ListPreferencesResponse(
            pairs=[
                pair("a", 8, 3),
                pair("b", 8, 3),
                pair("c", 3, 8),
                pair("d", 3, 3),
                pair("e", 8, 5),
                fb.PreferencePair(pair_id="f", chosen_sample_id="x", rejected_sample_id="y", weight=1.0),  # no versions
            ],
            next_cursor=4,
        )
    )
    assert judgements.tally(8, 3) == (2, 3) and judgements.tally(3, 8) == (1, 3)
    judgements.ingest(fb.ListPreferencesResponse(pairs=[pair("a", 3, 8), pair("b", 8, 3, weight=0.0)], next_cursor=6))
    assert judgements.tally(8, 3) == (0, 2)  # "a" flipped by later votes, "b" lost its support
    assert judgements.per_version() == {3: 2, 5: 1, 8: 3} and judgements.cursor == 6
    judgements.ingest_gold(
        fb.ExportFeedbackResponse(
            records=[
                fb.FeedbackRecord(
                    gold=True,
                    body=fb.FeedbackBody(pairwise=fb.PairwiseChoice(chosen_sample_id="c-c", rejected_sample_id="c-r")),
                ),
                fb.FeedbackRecord(
                    gold=False,
                    body=fb.FeedbackBody(pairwise=fb.PairwiseChoice(chosen_sample_id="a-c", rejected_sample_id="a-r")),
                ),
            ],
            next_cursor=2,
        )
    )
    assert judgements.gold_tally(3, 8) == (1, 1) and judgements.gold_tally(8, 3) == (0, 1)
    restored = PairedJudgements()
    restored.load_state_dict(judgements.state_dict())
    assert restored.tally(8, 3) == (0, 2) and restored.gold_tally(3, 8) == (1, 1) and restored.cursor == 6


class FakeReader:
    """Users compare the candidate (8) with the baseline (3) on interleaved pairs; the candidate wins `share` of them."""

    def __init__(self, share: float) -> None:
        self.share = share

    def preferences(self, since):
        wins = round(200 * self.share)
        yield fb.ListPreferencesResponse(
            pairs=[pair(f"p{i}", *((8, 3) if i < wins else (3, 8))) for i in range(200)], next_cursor=200
        )

    def rating_records(self, since):
        ids = [f"{v}-{i}" for v in ("c", "b") for i in range(12)]
        yield fb.ExportFeedbackResponse(
            records=[rated_by(f"user-{i % 4}", s) for i, s in enumerate(ids)], next_cursor=1
        )

    def ratings(self, since):
        yield fb.ListRatingsResponse(
            ratings=[rating(f"c-{i}", 8, self.share) for i in range(12)]
            + [rating(f"b-{i}", 3, 0.5) for i in range(12)],
            next_cursor=1,
        )


@pytest.mark.parametrize(("share", "action"), [(0.2, ROLLBACK), (0.55, PROMOTE)])
def test_safe_rollout_rolls_the_canary_back_or_promotes_the_same_weights(tmp_path, share, action):
    from services.online.canary import SafeRollout

    stable, canary = FakeReplica(), FakeReplica()
    versions = VersionAllocator(tmp_path / "versions.json")
    versions.observe(7)
    rollout = SafeRollout(stable, canary, VersionQuality(), FakeReader(share), versions, SETTINGS)
    decision = rollout.deploy([("w", None)] * 3, "note", baseline=3)
    assert decision.action == action and decision.candidate_version == 8
    assert decision.n == 200 and decision.effect == pytest.approx(share - 0.5)
    assert decision.ci_low < decision.effect < decision.ci_high and decision.statistic >= decision.threshold
    assert decision.candidate["rated_samples"] == 12  # the rated scores are kept for the record
    assert canary.calls[0] == ("push", 8, 3)
    if action == ROLLBACK:
        assert canary.calls[1:] == [("rollback", 3)] and stable.calls == []
    else:
        assert canary.calls[1:] == [] and stable.calls == [("push", 8, 3)]


def test_an_inconclusive_canary_is_rolled_back_at_the_end_of_the_window(tmp_path):
    from services.online.canary import SafeRollout

    stable, canary = FakeReplica(), FakeReplica()
    settings = CanarySettings(min_judgements=10, window_s=0.05, poll_s=0.01)

    class Silent(FakeReader):
        def preferences(self, since):
            yield fb.ListPreferencesResponse(next_cursor=0)

    rollout = SafeRollout(
        stable, canary, VersionQuality(), Silent(0.5), VersionAllocator(tmp_path / "v.json"), settings
    )
    decision = rollout.deploy([("w", None)], "note", baseline=0)
    assert decision.action == ROLLBACK and decision.n == 0 and "no paired judgements" in decision.reason
    assert stable.calls == []
