"""Feedback-measured quality per weight version, from the store's denoised ratings.

ListRatings returns each rated sample with its weight version and a score in [0, 1]
(the rater-weighted mean of its normalized ratings; raters the store's filters found
unreliable are dropped). A sample re-appears with an updated score when it gets more
ratings, so the tracker keeps the latest score per sample. ExportFeedback says who
rated each sample. Both replicas record into one store, and a version number means
the same weights on both, so this is the canary comparison's input.

The canary and the stable replica serve different users, and users differ: a harsh
or contrarian rater who happens to be on the canary would make the candidate look
worse. `paired` therefore compares like with like: only raters who rated samples of
both versions count, each rater's mean per version is taken, and the versions'
scores are the averages of those per-rater means (so their gap is the mean
within-rater difference).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rlhf.v1 import feedback_pb2

RATING_KINDS = (feedback_pb2.FEEDBACK_KIND_RATING, feedback_pb2.FEEDBACK_KIND_THUMBS)


@dataclass(frozen=True)
class VersionStats:
    version: int
    samples: int  # rated samples counted
    mean: float | None  # mean score in [0, 1]; None without ratings
    raters: int = 0  # raters behind them

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "rated_samples": self.samples,
            "raters": self.raters,
            "mean_score": None if self.mean is None else round(self.mean, 4),
        }


class VersionQuality:
    def __init__(self) -> None:
        self.cursor = 0  # ListRatings cursor consumed so far
        self.export_cursor = 0  # ExportFeedback cursor (who rated what)
        self._scores: dict[str, tuple[int, float]] = {}  # sample id -> (weight version, score)
        self._raters: dict[str, set[str]] = defaultdict(set)  # sample id -> raters (gold excluded)

    def ingest(self, reply: feedback_pb2.ListRatingsResponse) -> None:
        for rating in reply.ratings:
            self._scores[rating.sample_id] = (int(rating.weight_version), float(rating.score))
        self.cursor = max(self.cursor, int(reply.next_cursor))

    def ingest_raters(self, reply: feedback_pb2.ExportFeedbackResponse) -> None:
        for record in reply.records:
            if record.gold:
                continue
            body = record.body.rating if record.body.HasField("rating") else record.body.thumbs
            self._raters[body.sample_id].add(record.rater_id)
        self.export_cursor = max(self.export_cursor, int(reply.next_cursor))

    def refresh(self, reader) -> None:
        """Reads every page past the cursors (reader: clients.FeedbackReader)."""
        for page in reader.rating_records(self.export_cursor):
            self.ingest_raters(page)
        for page in reader.ratings(self.cursor):
            self.ingest(page)

    def stats(self, version: int) -> VersionStats:
        ids = [s for s, (v, _) in self._scores.items() if v == version]
        scores = [self._scores[s][1] for s in ids]
        raters = {r for s in ids for r in self._raters.get(s, ())}
        return VersionStats(version, len(scores), sum(scores) / len(scores) if scores else None, len(raters))

    def _by_rater(self, version: int) -> dict[str, list[float]]:
        by_rater: dict[str, list[float]] = defaultdict(list)
        for sample_id, (v, score) in self._scores.items():
            if v == version:
                for rater in self._raters.get(sample_id, ()):
                    by_rater[rater].append(score)
        return by_rater

    def paired(self, candidate: int, baseline: int) -> tuple[VersionStats, VersionStats]:
        """Both versions' stats over the raters who rated both (rater-balanced means)."""
        a, b = self._by_rater(candidate), self._by_rater(baseline)
        common = sorted(set(a) & set(b))

        def stats(version: int, by_rater: dict[str, list[float]]) -> VersionStats:
            if not common:
                return VersionStats(version, 0, None, 0)
            means = [sum(by_rater[r]) / len(by_rater[r]) for r in common]
            return VersionStats(version, sum(len(by_rater[r]) for r in common), sum(means) / len(means), len(common))

        return stats(candidate, a), stats(baseline, b)

    def table(self) -> list[VersionStats]:
        return [self.stats(v) for v in sorted({v for v, _ in self._scores.values()})]

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "export_cursor": self.export_cursor,
            "scores": {k: list(v) for k, v in self._scores.items()},
            "raters": {k: sorted(v) for k, v in self._raters.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.export_cursor = int(state["cursor"]), int(state["export_cursor"])
        self._scores = {k: (int(v), float(s)) for k, (v, s) in state["scores"].items()}
        self._raters = defaultdict(set, {k: set(v) for k, v in state["raters"].items()})
