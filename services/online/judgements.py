"""Paired stable-vs-canary judgements, read from the store's denoised preference pairs.

A canary user who is shown one completion of each version and picks one leaves a
pairwise record whose two samples were served by different weight versions.
ListPreferences returns it as a denoised pair (unreliable raters down-weighted or
dropped, duplicates collapsed, contradictions resolved) with the weight version of
each side, so the canary reads a judgement as: the pair's two versions, and which
one won. A pair re-appears when later votes change it; the latest answer counts.
Gold answers on a pair (a noise-free expert's, `SubmitGoldFeedback`) are part of the
pair's denoised direction; `gold` tallies them separately for the reward-hacking
guard, which needs the truth apart from the crowd.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rlhf.v1 import feedback_pb2


@dataclass(frozen=True)
class Judgement:
    winner: int  # weight version whose completion was preferred
    loser: int


class PairedJudgements:
    def __init__(self) -> None:
        self.cursor = 0  # ListPreferences cursor consumed
        self.gold_cursor = 0  # ExportFeedback cursor of gold pairwise records
        self._pairs: dict[str, Judgement] = {}  # pair id -> latest cross-version judgement
        self._versions: dict[str, int] = {}  # sample id -> weight version (from the pairs seen)
        self._gold: list[tuple[str, str]] = []  # (chosen sample id, rejected sample id) of gold answers

    def ingest(self, reply: feedback_pb2.ListPreferencesResponse) -> None:
        for pair in reply.pairs:
            if not (pair.HasField("chosen_weight_version") and pair.HasField("rejected_weight_version")):
                continue
            chosen, rejected = int(pair.chosen_weight_version), int(pair.rejected_weight_version)
            self._versions[pair.chosen_sample_id] = chosen
            self._versions[pair.rejected_sample_id] = rejected
            if chosen == rejected or pair.weight <= 0:
                self._pairs.pop(pair.pair_id, None)
            else:
                self._pairs[pair.pair_id] = Judgement(chosen, rejected)
        self.cursor = max(self.cursor, int(reply.next_cursor))

    def ingest_gold(self, reply: feedback_pb2.ExportFeedbackResponse) -> None:
        for record in reply.records:
            if record.gold and record.body.HasField("pairwise"):
                self._gold.append((record.body.pairwise.chosen_sample_id, record.body.pairwise.rejected_sample_id))
        self.gold_cursor = max(self.gold_cursor, int(reply.next_cursor))

    def refresh(self, reader) -> None:
        """Reads every page past the cursor (reader: services.clients.feedback.FeedbackReader)."""
        for page in reader.preferences(self.cursor):
            self.ingest(page)

    def refresh_gold(self, reader, limit: int = 10000) -> None:
        """Reads the gold pairwise answers past the gold cursor (ExportFeedback, scope admin)."""
        while True:
            request = feedback_pb2.ExportFeedbackRequest(
                since_cursor=self.gold_cursor, limit=limit, kinds=[feedback_pb2.FEEDBACK_KIND_PAIRWISE]
            )
            reply = reader.stub.ExportFeedback(request, timeout=getattr(reader, "timeout_s", 60.0))
            self.ingest_gold(reply)
            if not reply.has_more:
                return

    def tally(self, candidate: int, baseline: int) -> tuple[int, int]:
        """(candidate wins, judgements) over the pairs that put `candidate` against `baseline`."""
        wins = n = 0
        for judgement in self._pairs.values():
            if {judgement.winner, judgement.loser} == {candidate, baseline}:
                n += 1
                wins += judgement.winner == candidate
        return wins, n

    def per_version(self) -> dict[int, int]:
        """Cross-version judgements each version took part in."""
        counts: Counter = Counter()
        for judgement in self._pairs.values():
            counts[judgement.winner] += 1
            counts[judgement.loser] += 1
        return dict(sorted(counts.items()))

    def gold_tally(self, candidate: int, baseline: int) -> tuple[int, int]:
        """(candidate wins, answers) among gold answers on candidate-vs-baseline pairs."""
        wins = n = 0
        for chosen, rejected in self._gold:
            versions = (self._versions.get(chosen), self._versions.get(rejected))
            if set(versions) == {candidate, baseline} and candidate != baseline:
                n += 1
                wins += versions[0] == candidate
        return wins, n

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "gold_cursor": self.gold_cursor,
            "pairs": {k: [j.winner, j.loser] for k, j in self._pairs.items()},
            "versions": self._versions,
            "gold": [list(g) for g in self._gold],
        }

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.gold_cursor = int(state["cursor"]), int(state.get("gold_cursor", 0))
        self._pairs = {k: Judgement(int(w), int(lo)) for k, (w, lo) in state["pairs"].items()}
        self._versions = {k: int(v) for k, v in state.get("versions", {}).items()}
        self._gold = [(a, b) for a, b in state.get("gold", [])]
