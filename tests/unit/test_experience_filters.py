"""Denoising filters: each one's effect on small, hand-checked inputs, and on simulated noisy raters."""

from __future__ import annotations

import random

import pytest

from services.experience.filters import (
    FilterReport,
    FilterSettings,
    RatingVote,
    Vote,
    collapse_duplicate_votes,
    denoise_preferences,
    denoise_ratings,
    estimate_reliability,
    retry_after,
)

S = FilterSettings()


def vote(rater: str, winner: str, loser: str, seq: int, gold: bool = False, source: str = "pairwise") -> Vote:
    return Vote(rater, winner, loser, seq, source, gold)


def run_pairs(votes, calibration=None, settings=S):
    report = FilterReport()
    reliability = estimate_reliability(calibration if calibration is not None else votes, [], settings)
    return denoise_preferences(votes, reliability, settings, report), report


def test_duplicates_from_one_rater_collapse_to_the_latest():
    report = FilterReport()
    kept = collapse_duplicate_votes(
        [
            vote("r", "a", "b", 1, source="ranking"),
            vote("r", "b", "a", 2),
            vote("r", "a", "b", 3),
            vote("q", "a", "b", 4),
        ],
        report,
    )
    assert report.duplicates_collapsed == 2
    assert [(v.rater_id, v.winner, v.seq) for v in kept] == [("r", "a", 3), ("q", "a", 4)]


def test_identical_items_are_dropped_and_counted():
    decisions, report = run_pairs([vote("r", "a", "a", 1), vote("r", "a", "b", 2)])
    assert report.identical_dropped == 1
    assert [(d.winner, d.loser) for d in decisions] == [("a", "b")]


def test_contradiction_resolved_by_weighted_majority():
    decisions, report = run_pairs(
        [vote("r1", "a", "b", 1), vote("r2", "a", "b", 2), vote("r3", "b", "a", 3), vote("r4", "a", "b", 4)]
    )
    assert report.contradictions_resolved == 1 and report.contradictions_dropped == 0
    (decision,) = decisions
    assert (decision.winner, decision.loser, decision.votes) == ("a", "b", 4)
    assert 0.5 < decision.agreement < 1.0 and decision.weight > 0


def test_even_contradiction_is_dropped():
    decisions, report = run_pairs([vote("r1", "a", "b", 1), vote("r2", "b", "a", 2)])
    assert decisions == [] and report.contradictions_dropped == 1 and report.items_out == 0


def test_min_margin_decides_between_keep_and_drop():
    votes = [vote("r1", "a", "b", 1), vote("r2", "a", "b", 2), vote("r3", "b", "a", 3)]  # margin 1/3 before weights
    strict = FilterSettings(min_margin=0.9)
    assert run_pairs(votes, settings=strict)[1].contradictions_dropped == 1
    assert run_pairs(votes, settings=FilterSettings(min_margin=0.0))[1].contradictions_resolved == 1


def test_adversarial_rater_is_zeroed_by_consensus():
    votes, seq = [], 0
    for item in range(12):
        a, b = f"good{item}", f"bad{item}"
        for honest in ("h1", "h2", "h3"):
            seq += 1
            votes.append(vote(honest, a, b, seq))
        seq += 1
        votes.append(vote("troll", b, a, seq))
    decisions, report = run_pairs(votes)
    weights = {r.rater_id: r for r in report.raters}
    assert weights["troll"].weight == 0.0 and weights["troll"].consensus_checks == 12
    assert all(weights[h].weight == 1.0 for h in ("h1", "h2", "h3"))
    assert report.raters_zeroed == 1 and report.votes_dropped_low_weight == 12
    assert report.contradictions_resolved == 0  # the troll's votes never reach aggregation
    assert all(d.winner.startswith("good") and d.agreement == 1.0 for d in decisions) and len(decisions) == 12


def test_gold_checks_downweight_a_rater_the_crowd_cannot_judge():
    # Each pair has only one non-gold rater, so there is no consensus: gold decides.
    votes, seq = [], 0
    for item in range(6):
        seq += 1
        votes.append(vote("gold", f"x{item}", f"y{item}", seq, gold=True))
        seq += 1
        votes.append(vote("liar", f"y{item}", f"x{item}", seq))
        seq += 1
        votes.append(vote("sage", f"x{item}", f"y{item}", seq + 100))
    reliability = estimate_reliability(votes, [], S)
    assert reliability["liar"].gold_checks == 6 and reliability["liar"].weight == 0.0
    assert reliability["sage"].weight == 1.0
    assert "gold" not in reliability  # gold answers are the yardstick, not graded


def test_gold_vote_outweighs_a_single_rater():
    decisions, report = run_pairs([vote("g", "a", "b", 1, gold=True), vote("r", "b", "a", 2)], calibration=[])
    (decision,) = decisions
    assert decision.winner == "a" and report.contradictions_resolved == 1


def test_new_rater_gets_the_prior_weight():
    decisions, report = run_pairs([vote("new", "a", "b", 1)], calibration=[])
    assert decisions[0].weight == pytest.approx(1.0)
    assert report.raters[0].agreement == pytest.approx(S.prior_agreement)


def test_ratings_weighted_and_outlier_rater_downweighted():
    ratings, seq = [], 0
    for item in range(10):
        for rater in ("a", "b", "c"):
            seq += 1
            ratings.append(RatingVote(rater, f"s{item}", 0.8, seq))
        seq += 1
        ratings.append(RatingVote("noise", f"s{item}", 0.0, seq))
    report = FilterReport()
    reliability = estimate_reliability([], ratings, S)
    decisions = denoise_ratings(ratings, reliability, S, report)
    assert reliability["noise"].weight == 0.0
    assert all(d.score == pytest.approx(0.8) and d.ratings == 3 for d in decisions)
    assert report.items_out == 10 and report.votes_dropped_low_weight == 10


def test_rating_duplicates_collapse():
    ratings = [RatingVote("a", "s", 0.0, 1), RatingVote("a", "s", 1.0, 2)]
    report = FilterReport()
    (decision,) = denoise_ratings(ratings, {}, S, report)
    assert report.duplicates_collapsed == 1 and decision.score == 1.0


def test_noisy_crowd_recovers_the_hidden_preference():
    """30% adversarial raters, 10% label noise on the rest: far fewer wrong pairs than a naive majority."""
    rng = random.Random(7)
    raters = [f"r{i}" for i in range(10)]
    adversaries = set(raters[:3])
    votes, seq = [], 0
    for item in range(60):
        better, worse = f"p{item}-good", f"p{item}-bad"
        for rater in rng.sample(raters, 5):
            correct = rng.random() > 0.1
            if rater in adversaries:
                correct = not correct
            seq += 1
            votes.append(vote(rater, better, worse, seq) if correct else vote(rater, worse, better, seq))
    naive_wrong = 0
    for item in range(60):
        up = sum(1 for v in votes if v.winner == f"p{item}-good")
        naive_wrong += up * 2 <= sum(1 for v in votes if v.pair == tuple(sorted((f"p{item}-good", f"p{item}-bad"))))
    decisions, report = run_pairs(votes)
    correct = sum(d.winner.endswith("good") for d in decisions)
    wrong = len(decisions) - correct
    assert correct >= 54 and wrong <= 1 and wrong < naive_wrong / 4, (correct, wrong, naive_wrong)
    assert {r.rater_id for r in report.raters if r.weight == 0.0} == adversaries


@pytest.mark.parametrize(
    ("times", "limit", "expected"),
    [
        ([], 2, None),
        ([90.0], 2, None),
        ([90.0, 95.0], 2, 30.0),  # the 90 s one leaves the 60 s window at 150
        ([10.0, 90.0, 95.0], 2, 30.0),  # outside the window already
        ([90.0, 95.0], 0, None),  # unlimited
    ],
)
def test_retry_after(times, limit, expected):
    result = retry_after(times, limit, 60.0, now=120.0)
    assert result == (None if expected is None else pytest.approx(expected))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_agreement"):
        FilterSettings(min_agreement=0.5)
    with pytest.raises(ValueError, match="min_margin"):
        FilterSettings(min_margin=2)
