"""The FeedbackService servicer called directly (no transport) over a SQLite store: each kind, each refusal."""

from __future__ import annotations

import asyncio
import time

import pytest

from rlhf.v1 import feedback_pb2 as fb
from services.common.errors import InvalidArgument, NotFound
from services.experience.curation import Curator
from services.experience.feedback import AlreadyExists, FeedbackIntake, IntakeSettings, RaterRateLimited
from services.experience.records import SampleRecord
from services.experience.server import FeedbackServicer
from services.experience.store import ExperienceStore


class Context:
    def __init__(self, tenant: str = "") -> None:
        self.tenant = tenant
        self.trailing = ()

    def invocation_metadata(self):
        return (("x-rlhf-tenant", self.tenant),) if self.tenant else ()

    def set_trailing_metadata(self, metadata):
        self.trailing = metadata


def sample(sample_id: str, prompt: list[int], text: str, tenant: str = "default", template: str = "") -> SampleRecord:
    record = SampleRecord(
        sample_id, "req", tenant, 0, 0, "prompt", True, prompt, text, [1, 2], [-0.1, -0.2], "stop", 3, time.time()
    )
    record.template = template
    return record


@pytest.fixture
def servicer(tmp_path):
    store = ExperienceStore.open(f"sqlite:///{tmp_path}/experience.db")
    store.record_samples(
        [
            sample("a1", [1, 2], "first answer", template="critic"),
            sample("a2", [1, 2], "second answer", template="critic"),
            sample("a3", [1, 2], "third answer", template="critic"),
            sample("b1", [3, 4], "other prompt"),
            sample("x1", [1, 2], "their answer", tenant="other-team", template="critic"),
        ]
    )
    servicer = FeedbackServicer(
        store, FeedbackIntake(store, IntakeSettings(rate_limit=3, rate_window_s=60)), Curator(store), threads=2
    )
    yield servicer
    servicer.close()
    store.close()


def submit(servicer, rater="alice", context=None, gold=False, **body):
    request = fb.SubmitFeedbackRequest(rater_id=rater, body=fb.FeedbackBody(**body))
    method = servicer.SubmitGoldFeedback if gold else servicer.SubmitFeedback
    return asyncio.run(method(request, context or Context()))


def call(method, request):
    return asyncio.run(method(request, Context()))


def test_every_kind_is_stored_and_exported_as_submitted(servicer):
    bodies = [
        {"rating": fb.Rating(sample_id="a1", value=4)},
        {"thumbs": fb.Thumbs(sample_id="a2", up=True)},
        {"pairwise": fb.PairwiseChoice(chosen_sample_id="a1", rejected_sample_id="a2")},
        {"ranking": fb.Ranking(sample_ids=["a3", "a1", "a2"])},
        {"correction": fb.Correction(sample_id="a2", corrected_text="a better answer")},
        {"comment": fb.Comment(sample_id="a3", text="too long")},
    ]
    replies = [submit(servicer, rater=f"r{i}", **body) for i, body in enumerate(bodies)]
    assert [r.cursor for r in replies] == [1, 2, 3, 4, 5, 6]
    assert len({r.feedback_id for r in replies}) == 6
    export = call(servicer.ExportFeedback, fb.ExportFeedbackRequest())
    assert [r.body.WhichOneof("kind") for r in export.records] == [
        "rating",
        "thumbs",
        "pairwise",
        "ranking",
        "correction",
        "comment",
    ]
    rating = export.records[0].body.rating
    assert (rating.value, rating.scale_min, rating.scale_max) == (4, 1, 5)  # server default scale filled in
    assert list(export.records[3].body.ranking.sample_ids) == ["a3", "a1", "a2"]
    assert export.next_cursor == 6 and not export.has_more and export.records[0].tenant == "default"

    page = call(
        servicer.ExportFeedback,
        fb.ExportFeedbackRequest(since_cursor=2, limit=2, kinds=[fb.FEEDBACK_KIND_PAIRWISE, fb.FEEDBACK_KIND_COMMENT]),
    )
    assert [r.cursor for r in page.records] == [3, 6] and not page.has_more
    page = call(servicer.ExportFeedback, fb.ExportFeedbackRequest(limit=1))
    assert page.has_more and page.next_cursor == 1
    assert [r.rater_id for r in call(servicer.ExportFeedback, fb.ExportFeedbackRequest(rater_id="r4")).records] == [
        "r4"
    ]


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ({"rating": fb.Rating(sample_id="a1", value=6)}, InvalidArgument, r"value 6.0 is outside the scale \[1, 5\]"),
        ({"rating": fb.Rating(sample_id="a1", value=0.5, scale_min=0, scale_max=1)}, None, None),
        (
            {"rating": fb.Rating(sample_id="a1", value=1, scale_min=2, scale_max=1)},
            InvalidArgument,
            "scale_min < scale_max",
        ),
        ({"rating": fb.Rating(sample_id="a1", value=float("nan"))}, InvalidArgument, "outside the scale"),
        ({"thumbs": fb.Thumbs(sample_id="nope", up=True)}, NotFound, "no recorded sample 'nope'"),
        ({"thumbs": fb.Thumbs(sample_id="x1", up=True)}, NotFound, "no recorded sample 'x1' for tenant 'default'"),
        ({"thumbs": fb.Thumbs(sample_id="bad id!", up=True)}, InvalidArgument, "must be a sample id"),
        (
            {"pairwise": fb.PairwiseChoice(chosen_sample_id="a1", rejected_sample_id="b1")},
            InvalidArgument,
            "answer different prompts",
        ),
        (
            {"pairwise": fb.PairwiseChoice(chosen_sample_id="a1", rejected_sample_id="a1")},
            InvalidArgument,
            "the same sample",
        ),
        ({"ranking": fb.Ranking(sample_ids=["a1"])}, InvalidArgument, "give 2 to 16 sample ids, got 1"),
        ({"ranking": fb.Ranking(sample_ids=["a1", "a2", "a1"])}, InvalidArgument, "more than once"),
        ({"ranking": fb.Ranking(sample_ids=["a1", "b1"])}, InvalidArgument, "different prompts"),
        ({"correction": fb.Correction(sample_id="a1", corrected_text="first answer")}, InvalidArgument, "identical"),
        (
            {"correction": fb.Correction(sample_id="a1", corrected_text="  ")},
            InvalidArgument,
            "corrected_text is empty",
        ),
        (
            {"comment": fb.Comment(sample_id="a1", text="x" * 16385)},
            InvalidArgument,
            "16385 characters > max_text_chars=16384",
        ),
        ({}, InvalidArgument, "give exactly one of"),
    ],
)
def test_invalid_feedback_is_refused_with_a_clear_error(servicer, body, error, message):
    if error is None:
        submit(servicer, **body)
        return
    with pytest.raises(error, match=message):
        submit(servicer, **body)
    assert call(servicer.GetStats, fb.GetStatsRequest()).feedback == 0


def test_rater_id_is_checked(servicer):
    with pytest.raises(InvalidArgument, match="rater_id"):
        submit(servicer, rater="", thumbs=fb.Thumbs(sample_id="a1"))


def test_duplicates_are_already_exists_naming_the_first(servicer):
    first = submit(servicer, pairwise=fb.PairwiseChoice(chosen_sample_id="a1", rejected_sample_id="a2"))
    with pytest.raises(AlreadyExists, match=first.feedback_id):
        submit(
            servicer, pairwise=fb.PairwiseChoice(chosen_sample_id="a2", rejected_sample_id="a1")
        )  # flipped: same samples
    submit(
        servicer, rater="bob", pairwise=fb.PairwiseChoice(chosen_sample_id="a2", rejected_sample_id="a1")
    )  # other rater: fine
    submit(servicer, thumbs=fb.Thumbs(sample_id="a1", up=True))
    submit(servicer, rating=fb.Rating(sample_id="a1", value=5))  # other kind on the same sample: fine
    stats = call(servicer.GetStats, fb.GetStatsRequest())
    assert stats.feedback == 4 and stats.raters == 2
    assert {(r.reason, r.count) for r in stats.rejected} == {("already_exists", 1)}


def test_rate_limit_is_per_rater_with_a_retry_hint_and_gold_is_exempt(servicer):
    for sample_id in ("a1", "a2", "a3"):
        submit(servicer, thumbs=fb.Thumbs(sample_id=sample_id, up=True))
    context = Context()
    with pytest.raises(RaterRateLimited, match="reached 3 submissions per 60 s") as raised:
        submit(servicer, context=context, rating=fb.Rating(sample_id="a1", value=3))
    assert 59_000 < raised.value.retry_after_ms <= 60_000
    assert context.trailing == (("retry-after-ms", str(raised.value.retry_after_ms)),)
    submit(servicer, rater="bob", thumbs=fb.Thumbs(sample_id="a1", up=False))  # other raters unaffected
    for sample_id in ("a1", "a2", "a3", "b1"):
        submit(servicer, gold=True, thumbs=fb.Thumbs(sample_id=sample_id, up=True))
    gold = call(servicer.ExportFeedback, fb.ExportFeedbackRequest(rater_id="alice")).records
    assert sum(r.gold for r in gold) == 4


def test_gold_may_judge_any_tenant_and_tenants_see_only_their_samples(servicer):
    submit(servicer, gold=True, thumbs=fb.Thumbs(sample_id="x1", up=True))
    submit(servicer, context=Context("other-team"), thumbs=fb.Thumbs(sample_id="x1", up=True))
    with pytest.raises(NotFound):
        submit(servicer, context=Context("other-team"), thumbs=fb.Thumbs(sample_id="a1", up=True))


def test_preferences_ratings_and_prompts_for_trainers(servicer):
    submit(servicer, rater="alice", pairwise=fb.PairwiseChoice(chosen_sample_id="a1", rejected_sample_id="a2"))
    submit(servicer, rater="bob", ranking=fb.Ranking(sample_ids=["a1", "a3", "a2"]))
    submit(servicer, rater="carol", pairwise=fb.PairwiseChoice(chosen_sample_id="a2", rejected_sample_id="a1"))
    submit(servicer, rater="dave", correction=fb.Correction(sample_id="a3", corrected_text="the best answer"))
    submit(servicer, rater="alice", rating=fb.Rating(sample_id="a1", value=5))
    submit(servicer, rater="bob", thumbs=fb.Thumbs(sample_id="a1", up=True))
    submit(servicer, rater="carol", rating=fb.Rating(sample_id="a1", value=1))

    reply = call(servicer.ListPreferences, fb.ListPreferencesRequest())
    pairs = {(p.chosen_text, p.rejected_text): p for p in reply.pairs}
    assert set(pairs) == {
        ("first answer", "second answer"),
        ("first answer", "third answer"),
        ("third answer", "second answer"),
        ("the best answer", "third answer"),
    }
    top = pairs[("first answer", "second answer")]
    assert top.votes == 3 and top.agreement == pytest.approx(2 / 3, abs=0.1)
    assert set(top.sources) == {fb.FEEDBACK_KIND_PAIRWISE, fb.FEEDBACK_KIND_RANKING}
    assert list(top.prompt_token_ids) == [1, 2] and top.chat_template and top.prompt_text == "prompt"
    assert {p.template for p in reply.pairs} == {"critic"}  # the prompt's template, to group feedback by
    correction = pairs[("the best answer", "third answer")]
    assert correction.chosen_sample_id == "" and correction.rejected_sample_id == "a3"
    assert reply.report.contradictions_resolved == 1 and reply.report.items_out == 4 and reply.report.votes_in == 6
    assert reply.next_cursor == 4 and not reply.has_more
    again = call(servicer.ListPreferences, fb.ListPreferencesRequest(since_cursor=reply.next_cursor))
    assert len(again.pairs) == 0 and again.next_cursor == reply.next_cursor

    ratings = call(servicer.ListRatings, fb.ListRatingsRequest())
    (rated,) = ratings.ratings
    assert rated.sample_id == "a1" and rated.ratings == 3 and rated.completion_text == "first answer"
    assert 0.0 < rated.score < 1.0 and rated.weight_version == 3 and rated.template == "critic"
    assert ratings.next_cursor == 7

    prompts = call(servicer.ListPrompts, fb.ListPromptsRequest())
    assert [(list(p.prompt_token_ids), p.samples, p.template) for p in prompts.prompts] == [
        ([3, 4], 1, ""),
        ([1, 2], 4, "critic"),
    ]
    critic = call(servicer.ListPrompts, fb.ListPromptsRequest(template="critic"))
    assert [(list(p.prompt_token_ids), p.samples) for p in critic.prompts] == [([1, 2], 4)]
    assert call(servicer.ListPrompts, fb.ListPromptsRequest(template="other")).prompts == []
    with pytest.raises(InvalidArgument, match="template 'no space': at most 64 letters"):
        call(servicer.ListPrompts, fb.ListPromptsRequest(template="no space"))
    only = call(servicer.ListPrompts, fb.ListPromptsRequest(tenant="other-team"))
    assert [p.tenant for p in only.prompts] == ["other-team"]
    with pytest.raises(InvalidArgument, match="limit 10001 > 10000"):
        call(servicer.ListPrompts, fb.ListPromptsRequest(limit=10001))
