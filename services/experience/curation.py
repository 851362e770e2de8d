"""Training data from the store: denoised preference pairs, ratings and live prompts.

Readers page by cursor. A page of new feedback names the prompts (or samples) it
touched; each of those is then rebuilt from *all* its feedback up to the page's
end, so a pair re-appears, updated, whenever new votes arrive (its `pair_id` stays
the same). Rater weights come from the newest `reliability_window` judgements, so
a rater's past record counts, not only this page.

Completions are compared by text: two samples with the same text under the same
prompt are one item, so repeated pairs of texts merge and a "pair" of identical
texts is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from services.experience.filters import (
    FilterReport,
    FilterSettings,
    PairDecision,
    RatingDecision,
    RatingVote,
    Vote,
    denoise_preferences,
    denoise_ratings,
    estimate_reliability,
)
from services.experience.records import PREFERENCE_KINDS, RATING_KINDS, Kind, StoredFeedback, StoredSample
from services.experience.store import ExperienceStore


def _item(prompt_key: str, text: str) -> str:
    return hashlib.sha256(f"{prompt_key}\0{text}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Item:
    """A completion as the filters see it: its text and a sample that carries it ('' for corrections)."""

    prompt_key: str
    text: str
    sample_id: str


@dataclass(frozen=True)
class Preference:
    pair_id: str
    prompt: StoredSample
    chosen: Item
    rejected: Item
    decision: PairDecision


@dataclass(frozen=True)
class Rated:
    sample: StoredSample
    decision: RatingDecision


@dataclass(frozen=True)
class Page:
    """One reply's worth: items, where to continue, whether more is there, the filter report."""

    items: list
    next_cursor: int
    has_more: bool
    report: FilterReport


@dataclass(frozen=True)
class PromptSummary:
    sample: StoredSample  # its latest sample
    samples: int
    latest_weight_version: int


class Curator:
    """Builds training data from an ExperienceStore with the filters of filters.py."""

    def __init__(
        self, store: ExperienceStore, settings: FilterSettings = FilterSettings(), reliability_window: int = 5000
    ) -> None:
        self.store = store
        self.settings = settings
        self.reliability_window = reliability_window

    # ---- votes from records ------------------------------------------------

    def _votes(
        self, records: Sequence[StoredFeedback], samples: dict[str, StoredSample], items: dict[str, Item]
    ) -> list[Vote]:
        def item_of(sample_id: str) -> str:
            sample = samples[sample_id]
            key = _item(sample.prompt_key, sample.completion_text)
            items.setdefault(key, Item(sample.prompt_key, sample.completion_text, sample.sample_id))
            return key

        votes = []
        for record in records:
            ids = [s for s in record.sample_ids if s in samples]
            if len(ids) != len(record.sample_ids):
                continue  # samples are never deleted today; skip defensively if one is
            if record.kind is Kind.PAIRWISE:
                votes.append(
                    Vote(record.rater_id, item_of(ids[0]), item_of(ids[1]), record.seq, record.kind.value, record.gold)
                )
            elif record.kind is Kind.RANKING:
                keys = [item_of(s) for s in ids]
                votes.extend(
                    Vote(record.rater_id, keys[i], keys[j], record.seq, record.kind.value, record.gold)
                    for i in range(len(keys))
                    for j in range(i + 1, len(keys))
                )
            elif record.kind is Kind.CORRECTION:
                text = record.payload["corrected_text"]
                key = _item(record.prompt_key, text)
                items.setdefault(key, Item(record.prompt_key, text, ""))
                votes.append(Vote(record.rater_id, key, item_of(ids[0]), record.seq, record.kind.value, record.gold))
        return votes

    @staticmethod
    def _ratings(records: Sequence[StoredFeedback]) -> list[RatingVote]:
        return [
            RatingVote(r.rater_id, r.sample_ids[0], float(r.payload["score"]), r.seq, r.gold)
            for r in records
            if r.kind in RATING_KINDS
        ]

    def _reliability_inputs(self, upto: int, context: Sequence[StoredFeedback]) -> list[StoredFeedback]:
        recent = self.store.latest_feedback(upto, self.reliability_window, (*PREFERENCE_KINDS, *RATING_KINDS))
        by_seq = {r.seq: r for r in recent}
        by_seq.update((r.seq, r) for r in context)
        return [by_seq[s] for s in sorted(by_seq)]

    # ---- pages -------------------------------------------------------------

    def preferences(self, since: int, limit: int) -> Page:
        """Denoised pairs of the prompts that got preference feedback after `since`."""
        page, has_more = self.store.feedback_page(since, limit, PREFERENCE_KINDS)
        report = FilterReport()
        if not page:
            return Page([], since, False, report)
        upto = page[-1].seq
        context = self.store.feedback_on_prompts({r.prompt_key for r in page}, upto, PREFERENCE_KINDS)
        calibration = self._reliability_inputs(upto, context)
        samples = self.store.get_samples({s for r in calibration for s in r.sample_ids})
        items: dict[str, Item] = {}
        reliability = estimate_reliability(
            self._votes(calibration, samples, items), self._ratings(calibration), self.settings
        )
        report.records_in = len(calibration)
        decisions = denoise_preferences(self._votes(context, samples, items), reliability, self.settings, report)
        prompt_of = {s.prompt_key: s for s in samples.values()}
        pairs = []
        for decision in decisions:
            chosen, rejected = items[decision.winner], items[decision.loser]
            pair_id = hashlib.sha256("\0".join(sorted((decision.winner, decision.loser))).encode()).hexdigest()[:32]
            pairs.append(Preference(pair_id, prompt_of[rejected.prompt_key], chosen, rejected, decision))
        pairs.sort(key=lambda p: p.pair_id)
        return Page(pairs, upto, has_more, report)

    def ratings(self, since: int, limit: int) -> Page:
        """Denoised scores of the samples rated after `since`."""
        page, has_more = self.store.feedback_page(since, limit, RATING_KINDS)
        report = FilterReport()
        if not page:
            return Page([], since, False, report)
        upto = page[-1].seq
        touched = {r.sample_ids[0] for r in page}
        context = [
            r
            for r in self.store.feedback_on_prompts({r.prompt_key for r in page}, upto, RATING_KINDS)
            if r.sample_ids[0] in touched
        ]
        calibration = self._reliability_inputs(upto, context)
        samples = self.store.get_samples({s for r in calibration for s in r.sample_ids})
        reliability = estimate_reliability(
            self._votes(calibration, samples, {}), self._ratings(calibration), self.settings
        )
        report.records_in = len(calibration)
        decisions = denoise_ratings(self._ratings(context), reliability, self.settings, report)
        return Page([Rated(samples[d.item], d) for d in decisions], upto, has_more, report)

    def prompts(self, since: int, limit: int, tenant: str = "", template: str = "") -> Page:
        """Distinct prompts of the samples recorded after `since` (of `tenant` / `template` when given),
        in order of their latest occurrence."""
        page, has_more = self.store.sample_page(since, limit, tenant, template)
        summaries: dict[str, PromptSummary] = {}
        for sample in page:
            previous = summaries.pop(sample.prompt_key, None)
            count = previous.samples + 1 if previous else 1
            version = max(sample.weight_version, previous.latest_weight_version if previous else 0)
            summaries[sample.prompt_key] = PromptSummary(sample, count, version)
        return Page(list(summaries.values()), page[-1].seq if page else since, has_more, FilterReport())
