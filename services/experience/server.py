"""The FeedbackService servicer: validate, call the intake/curator on a thread, build the reply.

Store calls block, so each runs on a bounded thread pool and the event loop stays free.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from rlhf.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.prompt_templates import NAME as TEMPLATE_NAME
from services.common.server import Registration
from services.common.tenancy import tenant_of
from services.experience.config import ExperienceConfig
from services.experience.curation import Curator
from services.experience.feedback import RETRY_AFTER_KEY, FeedbackIntake, IntakeSettings, RaterRateLimited
from services.experience.filters import FilterReport, FilterSettings
from services.experience.records import Kind, StoredFeedback
from services.experience.store import ExperienceStore

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000

KIND_TO_PROTO = {
    Kind.RATING: feedback_pb2.FEEDBACK_KIND_RATING,
    Kind.THUMBS: feedback_pb2.FEEDBACK_KIND_THUMBS,
    Kind.PAIRWISE: feedback_pb2.FEEDBACK_KIND_PAIRWISE,
    Kind.RANKING: feedback_pb2.FEEDBACK_KIND_RANKING,
    Kind.CORRECTION: feedback_pb2.FEEDBACK_KIND_CORRECTION,
    Kind.COMMENT: feedback_pb2.FEEDBACK_KIND_COMMENT,
}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}


def _limit(value: int) -> int:
    if value > MAX_LIMIT:
        raise InvalidArgument(f"limit {value} > {MAX_LIMIT}")
    return value or DEFAULT_LIMIT


def body_of(record: StoredFeedback) -> feedback_pb2.FeedbackBody:
    """The stored judgement as the message it was submitted as."""
    ids, payload = record.sample_ids, record.payload
    if record.kind is Kind.RATING:
        return feedback_pb2.FeedbackBody(
            rating=feedback_pb2.Rating(
                sample_id=ids[0], value=payload["value"], scale_min=payload["scale_min"], scale_max=payload["scale_max"]
            )
        )
    if record.kind is Kind.THUMBS:
        return feedback_pb2.FeedbackBody(thumbs=feedback_pb2.Thumbs(sample_id=ids[0], up=payload["up"]))
    if record.kind is Kind.PAIRWISE:
        return feedback_pb2.FeedbackBody(
            pairwise=feedback_pb2.PairwiseChoice(chosen_sample_id=ids[0], rejected_sample_id=ids[1])
        )
    if record.kind is Kind.RANKING:
        return feedback_pb2.FeedbackBody(ranking=feedback_pb2.Ranking(sample_ids=ids))
    if record.kind is Kind.CORRECTION:
        return feedback_pb2.FeedbackBody(
            correction=feedback_pb2.Correction(sample_id=ids[0], corrected_text=payload["corrected_text"])
        )
    return feedback_pb2.FeedbackBody(comment=feedback_pb2.Comment(sample_id=ids[0], text=payload["text"]))


def report_proto(report: FilterReport) -> feedback_pb2.FilterReport:
    return feedback_pb2.FilterReport(
        records_in=report.records_in,
        votes_in=report.votes_in,
        duplicates_collapsed=report.duplicates_collapsed,
        raters_downweighted=report.raters_downweighted,
        raters_zeroed=report.raters_zeroed,
        votes_dropped_low_weight=report.votes_dropped_low_weight,
        contradictions_resolved=report.contradictions_resolved,
        contradictions_dropped=report.contradictions_dropped,
        identical_dropped=report.identical_dropped,
        items_out=report.items_out,
        raters=[
            feedback_pb2.RaterWeight(
                rater_id=s.rater_id,
                weight=s.weight,
                agreement=s.agreement,
                consensus_checks=s.consensus_checks,
                gold_checks=s.gold_checks,
            )
            for s in report.raters
        ],
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, store: ExperienceStore, intake: FeedbackIntake, curator: Curator, threads: int = 8) -> None:
        self.store = store
        self.intake = intake
        self.curator = curator
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="experience-db")

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def registration(self) -> Registration:
        return Registration(self, feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, "rlhf.v1.FeedbackService")

    async def _submit(self, request, context, gold: bool) -> feedback_pb2.SubmitFeedbackResponse:
        tenant = tenant_of(context)
        try:
            stored = await self._call(self.intake.submit, request, tenant, gold)
        except RaterRateLimited as exc:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(exc.retry_after_ms)),))
            raise
        return feedback_pb2.SubmitFeedbackResponse(
            feedback_id=stored.feedback_id, cursor=stored.seq, created_unix=stored.created_at
        )

    async def SubmitFeedback(self, request, context):
        return await self._submit(request, context, gold=False)

    async def SubmitGoldFeedback(self, request, context):
        return await self._submit(request, context, gold=True)

    async def ExportFeedback(self, request, context):
        kinds = []
        for value in request.kinds:
            if value not in PROTO_TO_KIND:
                raise InvalidArgument(f"kinds: unknown FeedbackKind {value}")
            kinds.append(PROTO_TO_KIND[value])
        records, has_more = await self._call(
            self.store.feedback_page, request.since_cursor, _limit(request.limit), kinds, request.rater_id
        )
        return feedback_pb2.ExportFeedbackResponse(
            records=[
                feedback_pb2.FeedbackRecord(
                    feedback_id=r.feedback_id,
                    cursor=r.seq,
                    kind=KIND_TO_PROTO[r.kind],
                    rater_id=r.rater_id,
                    tenant=r.tenant,
                    gold=r.gold,
                    created_unix=r.created_at,
                    body=body_of(r),
                )
                for r in records
            ],
            next_cursor=records[-1].seq if records else request.since_cursor,
            has_more=has_more,
        )

    async def ListPreferences(self, request, context):
        page = await self._call(self.curator.preferences, request.since_cursor, _limit(request.limit))
        ids = {i for p in page.items for i in (p.chosen.sample_id, p.rejected.sample_id) if i}
        served = await self._call(self.store.get_samples, ids)  # which weight version served each side
        pairs = []
        for p in page.items:
            versions = {
                f"{side}_weight_version": served[i].weight_version
                for side, i in (("chosen", p.chosen.sample_id), ("rejected", p.rejected.sample_id))
                if i in served
            }
            pairs.append(
                feedback_pb2.PreferencePair(
                    **versions,
                    pair_id=p.pair_id,
                    prompt_text=p.prompt.prompt_text,
                    prompt_token_ids=p.prompt.prompt_token_ids,
                    chat_template=p.prompt.chat_template,
                    chosen_text=p.chosen.text,
                    rejected_text=p.rejected.text,
                    chosen_sample_id=p.chosen.sample_id,
                    rejected_sample_id=p.rejected.sample_id,
                    template=p.prompt.template,
                    weight=p.decision.weight,
                    agreement=p.decision.agreement,
                    votes=p.decision.votes,
                    sources=[KIND_TO_PROTO[Kind(s)] for s in p.decision.sources],
                )
            )
        return feedback_pb2.ListPreferencesResponse(
            pairs=pairs, next_cursor=page.next_cursor, has_more=page.has_more, report=report_proto(page.report)
        )

    async def ListRatings(self, request, context):
        page = await self._call(self.curator.ratings, request.since_cursor, _limit(request.limit))
        return feedback_pb2.ListRatingsResponse(
            ratings=[
                feedback_pb2.SampleRating(
                    sample_id=r.sample.sample_id,
                    prompt_text=r.sample.prompt_text,
                    prompt_token_ids=r.sample.prompt_token_ids,
                    chat_template=r.sample.chat_template,
                    completion_text=r.sample.completion_text,
                    score=r.decision.score,
                    weight=r.decision.weight,
                    ratings=r.decision.ratings,
                    weight_version=r.sample.weight_version,
                    template=r.sample.template,
                )
                for r in page.items
            ],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
            report=report_proto(page.report),
        )

    async def ListPrompts(self, request, context):
        if request.template and not TEMPLATE_NAME.fullmatch(request.template):
            raise InvalidArgument(f"template {request.template[:80]!r}: at most 64 letters, digits, '-' or '_'")
        page = await self._call(
            self.curator.prompts, request.since_cursor, _limit(request.limit), request.tenant, request.template
        )
        return feedback_pb2.ListPromptsResponse(
            prompts=[
                feedback_pb2.LivePrompt(
                    prompt_text=s.sample.prompt_text,
                    prompt_token_ids=s.sample.prompt_token_ids,
                    chat_template=s.sample.chat_template,
                    tenant=s.sample.tenant,
                    samples=s.samples,
                    last_seen_unix=s.sample.created_at,
                    latest_weight_version=s.latest_weight_version,
                    template=s.sample.template,
                )
                for s in page.items
            ],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
        )

    async def GetStats(self, request, context):
        counts = await self._call(self.store.counts)
        return feedback_pb2.GetStatsResponse(
            samples=counts.samples,
            feedback=counts.feedback,
            by_kind=[
                feedback_pb2.KindCount(kind=KIND_TO_PROTO[k], count=n)
                for k, n in sorted(counts.feedback_by_kind.items(), key=lambda kv: KIND_TO_PROTO[kv[0]])
            ],
            raters=counts.raters,
            samples_cursor=counts.samples_cursor,
            feedback_cursor=counts.feedback_cursor,
            rejected=[feedback_pb2.RejectionCount(reason=r, count=n) for r, n in sorted(self.intake.rejected.items())],
            schema_revision=self.store.schema_revision,
        )


def build_servicer(store: ExperienceStore, config: ExperienceConfig | None = None) -> FeedbackServicer:
    """A servicer over `store`; settings from an ExperienceConfig, or the defaults."""
    if config is None:
        return FeedbackServicer(store, FeedbackIntake(store, IntakeSettings()), Curator(store, FilterSettings()))
    return FeedbackServicer(
        store,
        FeedbackIntake(store, config.intake()),
        Curator(store, config.filters(), config.reliability_window),
        threads=config.db_threads,
    )
