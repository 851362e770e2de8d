"""Denoising human feedback: pure functions over votes and ratings, every effect counted.

Live feedback is noisy: people click twice, contradict each other, some guess and a
few answer against their judgement on purpose. Before feedback becomes training data:

1. **Duplicates collapse**: one rater's repeated judgement of the same pair (a
   pairwise choice also implied by their ranking, or the same two texts met on
   other samples) counts once, their latest.
2. **Rater reliability**: each rater's agreement with the leave-one-out weighted
   consensus of the others (and with gold answers, which count `gold_check_weight`
   times as much), smoothed by a prior, gives a weight in [0, 1]:
   `clip((agreement - 0.5) / (min_agreement - 0.5), 0, 1)`; a rating agrees when
   it is within `rating_tolerance` of the others' weighted median. Chance-level or
   adversarial raters get 0 and their votes are dropped. Weights are re-estimated
   `iterations` times against the weighted consensus, a light form of Dawid-Skene.
3. **Contradictions** (A>B and B>A on one pair) are kept in the weighted
   majority's direction when its margin `(win - lose) / (win + lose)` reaches
   `min_margin`, otherwise dropped.
4. **Rate limits** are enforced at submission (`retry_after`), not here.

Nothing in this module touches a database or the network; `FilterReport` says
what each step did.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FilterSettings:
    """How hard the filters judge. Defaults suit a handful of votes per item."""

    min_agreement: float = 0.7
    """Agreement at or above which a rater keeps full weight (must be > 0.5)."""
    prior_agreement: float = 0.8
    """Agreement assumed for a rater before evidence (new raters are trusted this much)."""
    prior_strength: float = 4.0
    """How many checks the prior is worth."""
    gold_check_weight: float = 3.0
    """A check against a gold answer counts as this many consensus checks."""
    gold_vote_weight: float = 3.0
    """Weight of a gold answer's vote when pairs and ratings are aggregated."""
    min_margin: float = 0.3
    """Contradicted pairs need (win - lose) / (win + lose) at least this to be kept."""
    rating_tolerance: float = 0.25
    """A normalized rating within this of the others' weighted median counts as agreeing."""
    iterations: int = 3
    """Re-estimations of rater weights against the weighted consensus."""

    def __post_init__(self) -> None:
        if not 0.5 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0.5, 1], got {self.min_agreement}")
        if not 0.0 <= self.prior_agreement <= 1.0 or self.prior_strength < 0:
            raise ValueError("prior_agreement must be in [0, 1] and prior_strength >= 0")
        if not 0.0 <= self.min_margin <= 1.0:
            raise ValueError(f"min_margin must be in [0, 1], got {self.min_margin}")
        if self.gold_check_weight < 0 or self.gold_vote_weight <= 0 or self.iterations < 1:
            raise ValueError("gold_check_weight >= 0, gold_vote_weight > 0 and iterations >= 1 are required")


@dataclass(frozen=True)
class Vote:
    """One rater's judgement that item `winner` beats item `loser` (items: completion identities)."""

    rater_id: str
    winner: str
    loser: str
    seq: int
    source: str
    gold: bool = False

    @property
    def pair(self) -> tuple[str, str]:
        return (self.winner, self.loser) if self.winner < self.loser else (self.loser, self.winner)


@dataclass(frozen=True)
class RatingVote:
    """One rater's normalized score in [0, 1] of item `item`."""

    rater_id: str
    item: str
    score: float
    seq: int
    gold: bool = False


@dataclass
class RaterStats:
    rater_id: str
    weight: float = 1.0
    agreement: float = 1.0
    consensus_checks: int = 0
    gold_checks: int = 0


@dataclass(frozen=True)
class PairDecision:
    """A kept preference: `winner` over `loser` with net weighted support `weight`."""

    winner: str
    loser: str
    weight: float
    agreement: float
    votes: int
    sources: tuple[str, ...]


@dataclass(frozen=True)
class RatingDecision:
    item: str
    score: float
    weight: float
    ratings: int


@dataclass
class FilterReport:
    """What the filters did; mirrors rlhf.v1.FilterReport."""

    records_in: int = 0
    votes_in: int = 0
    duplicates_collapsed: int = 0
    raters_downweighted: int = 0
    raters_zeroed: int = 0
    votes_dropped_low_weight: int = 0
    contradictions_resolved: int = 0
    contradictions_dropped: int = 0
    identical_dropped: int = 0
    items_out: int = 0
    raters: list[RaterStats] = field(default_factory=list)


# ---- 1. duplicates -----------------------------------------------------------


def drop_identical(votes: Iterable[Vote], report: FilterReport) -> list[Vote]:
    """Votes between two identical items carry no signal."""
    kept = []
    for vote in votes:
        if vote.winner == vote.loser:
            report.identical_dropped += 1
        else:
            kept.append(vote)
    return kept


def collapse_duplicate_votes(votes: Iterable[Vote], report: FilterReport) -> list[Vote]:
    """One vote per (rater, gold, pair): the latest (highest seq) wins."""
    latest: dict[tuple[str, bool, tuple[str, str]], Vote] = {}
    total = 0
    for vote in votes:
        total += 1
        key = (vote.rater_id, vote.gold, vote.pair)
        if key not in latest or vote.seq > latest[key].seq:
            latest[key] = vote
    report.duplicates_collapsed += total - len(latest)
    return sorted(latest.values(), key=lambda v: v.seq)


def collapse_duplicate_ratings(ratings: Iterable[RatingVote], report: FilterReport) -> list[RatingVote]:
    """One rating per (rater, gold, item): the latest wins (a thumbs and a scalar on one sample count once)."""
    latest: dict[tuple[str, bool, str], RatingVote] = {}
    total = 0
    for rating in ratings:
        total += 1
        key = (rating.rater_id, rating.gold, rating.item)
        if key not in latest or rating.seq > latest[key].seq:
            latest[key] = rating
    report.duplicates_collapsed += total - len(latest)
    return sorted(latest.values(), key=lambda r: r.seq)


# ---- 2. rater reliability ----------------------------------------------------


def _weighted_median(scored: Sequence[tuple[float, float]]) -> float | None:
    """Median of (score, weight) pairs; robust to the outliers it is meant to find."""
    total = sum(w for _, w in scored)
    if total <= 0:
        return None
    running = 0.0
    for score, weight in sorted(scored):
        running += weight
        if running >= total / 2:
            return score
    return None


def _weight(agreement: float, settings: FilterSettings) -> float:
    return min(1.0, max(0.0, (agreement - 0.5) / (settings.min_agreement - 0.5)))


def rater_weights(
    votes: Sequence[Vote], ratings: Sequence[RatingVote], settings: FilterSettings
) -> dict[str, RaterStats]:
    """Each non-gold rater's agreement and weight, from pairwise votes and ratings."""
    stats = {
        r: RaterStats(r)
        for r in sorted({v.rater_id for v in votes if not v.gold} | {r.rater_id for r in ratings if not r.gold})
    }
    by_pair: dict[tuple[str, str], list[Vote]] = defaultdict(list)
    for vote in votes:
        by_pair[vote.pair].append(vote)
    by_item: dict[str, list[RatingVote]] = defaultdict(list)
    for rating in ratings:
        by_item[rating.item].append(rating)

    for _ in range(settings.iterations):
        weights = {r: s.weight for r, s in stats.items()}
        agree = defaultdict(float)
        checks = defaultdict(float)
        consensus_n = defaultdict(int)
        gold_n = defaultdict(int)

        for pair_votes in by_pair.values():
            gold_net = sum(1 if v.winner == pair_votes[0].winner else -1 for v in pair_votes if v.gold)
            for vote in pair_votes:
                if vote.gold:
                    continue
                sign = 1 if vote.winner == pair_votes[0].winner else -1
                others = sum(
                    weights[o.rater_id] * (1 if o.winner == pair_votes[0].winner else -1)
                    for o in pair_votes
                    if not o.gold and o.rater_id != vote.rater_id
                )
                if others:
                    agree[vote.rater_id] += sign * others > 0
                    checks[vote.rater_id] += 1
                    consensus_n[vote.rater_id] += 1
                if gold_net:
                    agree[vote.rater_id] += settings.gold_check_weight * (sign * gold_net > 0)
                    checks[vote.rater_id] += settings.gold_check_weight
                    gold_n[vote.rater_id] += 1

        for item_ratings in by_item.values():
            gold_scores = [r.score for r in item_ratings if r.gold]
            for rating in item_ratings:
                if rating.gold:
                    continue
                others = [
                    (o.score, weights[o.rater_id]) for o in item_ratings if not o.gold and o.rater_id != rating.rater_id
                ]
                consensus = _weighted_median(others)
                if consensus is not None:
                    agree[rating.rater_id] += abs(rating.score - consensus) <= settings.rating_tolerance
                    checks[rating.rater_id] += 1
                    consensus_n[rating.rater_id] += 1
                if gold_scores:
                    gold_mean = sum(gold_scores) / len(gold_scores)
                    agree[rating.rater_id] += settings.gold_check_weight * (
                        abs(rating.score - gold_mean) <= settings.rating_tolerance
                    )
                    checks[rating.rater_id] += settings.gold_check_weight
                    gold_n[rating.rater_id] += 1

        for rater, s in stats.items():
            prior = settings.prior_strength
            s.agreement = (
                (agree[rater] + prior * settings.prior_agreement) / (checks[rater] + prior)
                if checks[rater] + prior
                else 1.0
            )
            s.weight = _weight(s.agreement, settings)
            s.consensus_checks, s.gold_checks = consensus_n[rater], gold_n[rater]
    return stats


def _report_raters(stats: dict[str, RaterStats], report: FilterReport) -> None:
    report.raters = [stats[r] for r in sorted(stats)]
    report.raters_downweighted = sum(1 for s in stats.values() if s.weight < 1.0)
    report.raters_zeroed = sum(1 for s in stats.values() if s.weight == 0.0)


def _vote_weight(rater_id: str, gold: bool, stats: dict[str, RaterStats], settings: FilterSettings) -> float:
    return settings.gold_vote_weight if gold else stats[rater_id].weight


# ---- 3. contradictions and aggregation ---------------------------------------


def resolve_pairs(
    votes: Sequence[Vote], stats: dict[str, RaterStats], settings: FilterSettings, report: FilterReport
) -> list[PairDecision]:
    """Weighted votes per pair -> one direction per pair, or nothing for an unresolved contradiction."""
    by_pair: dict[tuple[str, str], list[tuple[Vote, float]]] = defaultdict(list)
    for vote in votes:
        weight = _vote_weight(vote.rater_id, vote.gold, stats, settings)
        if weight <= 0:
            report.votes_dropped_low_weight += 1
            continue
        by_pair[vote.pair].append((vote, weight))
    decisions = []
    for (a, b), weighted in sorted(by_pair.items()):
        for_a = sum(w for v, w in weighted if v.winner == a)
        for_b = sum(w for v, w in weighted if v.winner == b)
        winner, loser, win, lose = (a, b, for_a, for_b) if for_a >= for_b else (b, a, for_b, for_a)
        if lose > 0:
            if (win - lose) / (win + lose) < settings.min_margin or math.isclose(win, lose):
                report.contradictions_dropped += 1
                continue
            report.contradictions_resolved += 1
        decisions.append(
            PairDecision(
                winner=winner,
                loser=loser,
                weight=win - lose,
                agreement=win / (win + lose),
                votes=len(weighted),
                sources=tuple(sorted({v.source for v, _ in weighted})),
            )
        )
    report.items_out += len(decisions)
    return decisions


def aggregate_ratings(
    ratings: Sequence[RatingVote], stats: dict[str, RaterStats], settings: FilterSettings, report: FilterReport
) -> list[RatingDecision]:
    """Weighted mean score per item; zero-weight raters' ratings are dropped."""
    by_item: dict[str, list[tuple[RatingVote, float]]] = defaultdict(list)
    for rating in ratings:
        weight = _vote_weight(rating.rater_id, rating.gold, stats, settings)
        if weight <= 0:
            report.votes_dropped_low_weight += 1
            continue
        by_item[rating.item].append((rating, weight))
    decisions = []
    for item, weighted in sorted(by_item.items()):
        total = sum(w for _, w in weighted)
        decisions.append(RatingDecision(item, sum(r.score * w for r, w in weighted) / total, total, len(weighted)))
    report.items_out += len(decisions)
    return decisions


def estimate_reliability(
    votes: Sequence[Vote], ratings: Sequence[RatingVote], settings: FilterSettings
) -> dict[str, RaterStats]:
    """Rater weights from a (usually wider) calibration set of votes and ratings."""
    votes = collapse_duplicate_votes(drop_identical(votes, FilterReport()), FilterReport())
    return rater_weights(votes, collapse_duplicate_ratings(ratings, FilterReport()), settings)


def _stats_for(
    raters: Iterable[str], reliability: dict[str, RaterStats], settings: FilterSettings
) -> dict[str, RaterStats]:
    """The raters' stats; a rater missing from `reliability` gets the prior."""
    prior = settings.prior_agreement
    return {r: reliability.get(r) or RaterStats(r, _weight(prior, settings), prior) for r in sorted(set(raters))}


def denoise_preferences(
    votes: Sequence[Vote], reliability: dict[str, RaterStats], settings: FilterSettings, report: FilterReport
) -> list[PairDecision]:
    """Identical pairs dropped, duplicates collapsed, votes weighted by rater, contradictions resolved."""
    report.votes_in += len(votes)
    votes = collapse_duplicate_votes(drop_identical(votes, report), report)
    stats = _stats_for((v.rater_id for v in votes if not v.gold), reliability, settings)
    _report_raters(stats, report)
    return resolve_pairs(votes, stats, settings, report)


def denoise_ratings(
    ratings: Sequence[RatingVote], reliability: dict[str, RaterStats], settings: FilterSettings, report: FilterReport
) -> list[RatingDecision]:
    """Duplicates collapsed, ratings weighted by rater, averaged per item."""
    report.votes_in += len(ratings)
    ratings = collapse_duplicate_ratings(ratings, report)
    stats = _stats_for((r.rater_id for r in ratings if not r.gold), reliability, settings)
    _report_raters(stats, report)
    return aggregate_ratings(ratings, stats, settings, report)


# ---- 4. rate limits (enforced at submission) ---------------------------------


def retry_after(recent_times: Sequence[float], limit: int, window_s: float, now: float) -> float | None:
    """Sliding-window limit: None if one more submission fits, else seconds until one does.

    `recent_times` are the rater's submission times within the window, oldest
    first; `limit` <= 0 means unlimited.
    """
    if limit <= 0:
        return None
    in_window = [t for t in recent_times if t > now - window_s]
    if len(in_window) < limit:
        return None
    return max(0.001, in_window[len(in_window) - limit] + window_s - now)
