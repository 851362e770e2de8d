"""Accepting feedback: check a submission, resolve its samples, store it once.

`parse_submission` checks what can be checked from the message alone (kinds,
ranges, sizes); `FeedbackIntake.submit` checks it against the store (samples
exist and belong to the caller's tenant, judged samples answer the same prompt,
a correction really changes the text), enforces the per-rater rate limit and
stores it. Errors are the services.common.errors kinds, so any server maps them.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from rlhf.v1 import feedback_pb2
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError
from services.experience import metrics
from services.experience.records import FeedbackDraft, Kind, StoredFeedback
from services.experience.store import DuplicateFeedback, ExperienceStore, RateLimited

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"
MAX_RANKED = 16
_RATER = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")
_SAMPLE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, message: str, existing_id: str) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class RaterRateLimited(ResourceExhausted):
    """RESOURCE_EXHAUSTED with `retry_after_ms`, which the servicer sends as trailing metadata."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class IntakeSettings:
    """Limits on submissions."""

    rating_scale_min: float = 1.0
    """Scale used when a Rating leaves scale_min unset."""
    rating_scale_max: float = 5.0
    """Scale used when a Rating leaves scale_max unset."""
    max_text_chars: int = 16384
    """Longest correction or comment."""
    rate_limit: int = 120
    """Most submissions per rater within rate_window_s (gold exempt); 0 = unlimited."""
    rate_window_s: float = 60.0
    """Sliding window of the rate limit, seconds."""


@dataclass(frozen=True)
class Submission:
    """A submission that passed the message-only checks."""

    kind: Kind
    rater_id: str
    sample_ids: tuple[str, ...]
    payload: dict[str, Any] = field(default_factory=dict)


def _sample_id(value: str, where: str) -> str:
    if not _SAMPLE.match(value):
        raise InvalidArgument(
            f"{where} must be a sample id (1-64 of [A-Za-z0-9_-], as returned by the policy), got {value!r}"
        )
    return value


def _text(value: str, where: str, limit: int) -> str:
    if not value.strip():
        raise InvalidArgument(f"{where} is empty")
    if len(value) > limit:
        raise InvalidArgument(f"{where} has {len(value)} characters > max_text_chars={limit}")
    return value


def parse_submission(request: feedback_pb2.SubmitFeedbackRequest, settings: IntakeSettings) -> Submission:
    """Message-only validation; raises InvalidArgument with what was wrong."""
    if not _RATER.match(request.rater_id):
        raise InvalidArgument(f"rater_id must be 1-128 of [A-Za-z0-9._@:-], got {request.rater_id!r}")
    rater = request.rater_id
    which = request.body.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("body: give exactly one of rating, thumbs, pairwise, ranking, correction, comment")
    if which == "rating":
        rating = request.body.rating
        low = rating.scale_min if rating.HasField("scale_min") else settings.rating_scale_min
        high = rating.scale_max if rating.HasField("scale_max") else settings.rating_scale_max
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InvalidArgument(f"rating: the scale needs finite scale_min < scale_max, got [{low}, {high}]")
        if not (math.isfinite(rating.value) and low <= rating.value <= high):
            raise InvalidArgument(f"rating: value {rating.value} is outside the scale [{low:g}, {high:g}]")
        payload = {
            "value": rating.value,
            "scale_min": low,
            "scale_max": high,
            "score": (rating.value - low) / (high - low),
        }
        return Submission(Kind.RATING, rater, (_sample_id(rating.sample_id, "rating.sample_id"),), payload)
    if which == "thumbs":
        thumbs = request.body.thumbs
        payload = {"up": thumbs.up, "score": 1.0 if thumbs.up else 0.0}
        return Submission(Kind.THUMBS, rater, (_sample_id(thumbs.sample_id, "thumbs.sample_id"),), payload)
    if which == "pairwise":
        pair = request.body.pairwise
        ids = (
            _sample_id(pair.chosen_sample_id, "pairwise.chosen_sample_id"),
            _sample_id(pair.rejected_sample_id, "pairwise.rejected_sample_id"),
        )
        if ids[0] == ids[1]:
            raise InvalidArgument("pairwise: chosen and rejected are the same sample")
        return Submission(Kind.PAIRWISE, rater, ids)
    if which == "ranking":
        ids = tuple(_sample_id(s, f"ranking.sample_ids[{i}]") for i, s in enumerate(request.body.ranking.sample_ids))
        if not 2 <= len(ids) <= MAX_RANKED:
            raise InvalidArgument(f"ranking: give 2 to {MAX_RANKED} sample ids, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("ranking: a sample appears more than once")
        return Submission(Kind.RANKING, rater, ids)
    if which == "correction":
        correction = request.body.correction
        text = _text(correction.corrected_text, "correction.corrected_text", settings.max_text_chars)
        return Submission(
            Kind.CORRECTION,
            rater,
            (_sample_id(correction.sample_id, "correction.sample_id"),),
            {"corrected_text": text},
        )
    comment = request.body.comment
    text = _text(comment.text, "comment.text", settings.max_text_chars)
    return Submission(Kind.COMMENT, rater, (_sample_id(comment.sample_id, "comment.sample_id"),), {"text": text})


class FeedbackIntake:
    """Validates submissions against the store and stores them; counts refusals by reason."""

    def __init__(self, store: ExperienceStore, settings: IntakeSettings = IntakeSettings()) -> None:
        self.store = store
        self.settings = settings
        self._rejected: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def submit(self, request: feedback_pb2.SubmitFeedbackRequest, tenant: str, gold: bool = False) -> StoredFeedback:
        """Stores the feedback or raises InvalidArgument / NotFound / AlreadyExists / RaterRateLimited."""
        kind = "unknown"
        try:
            submission = parse_submission(request, self.settings)
            kind = submission.kind.value
            stored = self._store(submission, tenant, gold)
        except ServiceError as exc:
            reason = {
                grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
                grpc.StatusCode.NOT_FOUND: "not_found",
                grpc.StatusCode.ALREADY_EXISTS: "already_exists",
                grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited",
            }.get(exc.code, "other")
            with self._lock:
                self._rejected[reason] += 1
            metrics.SUBMISSIONS.labels(kind, reason).inc()
            raise
        metrics.SUBMISSIONS.labels(kind, "gold" if gold else "accepted").inc()
        return stored

    def _store(self, submission: Submission, tenant: str, gold: bool) -> StoredFeedback:
        found = self.store.get_samples(submission.sample_ids)
        for sample_id in submission.sample_ids:
            sample = found.get(sample_id)
            if sample is None or (not gold and sample.tenant != tenant):
                raise NotFound(
                    f"no recorded sample {sample_id!r} for tenant {tenant!r} (the policy records only samples of "
                    "requests with recording on, and may drop some under load)"
                )
        samples = [found[s] for s in submission.sample_ids]
        if len({s.prompt_key for s in samples}) > 1:
            raise InvalidArgument(
                f"{submission.kind.value}: samples {list(submission.sample_ids)} answer different prompts; "
                "only completions of the same prompt can be compared"
            )
        if submission.kind is Kind.CORRECTION and submission.payload["corrected_text"] == samples[0].completion_text:
            raise InvalidArgument("correction: corrected_text is identical to the sample's text")
        draft = FeedbackDraft(
            kind=submission.kind,
            rater_id=submission.rater_id,
            tenant=tenant,
            gold=gold,
            sample_ids=submission.sample_ids,
            prompt_key=samples[0].prompt_key,
            payload=submission.payload,
        )
        limit = None if gold else (self.settings.rate_limit, self.settings.rate_window_s)
        try:
            return self.store.add_feedback(draft, rate_limit=limit)
        except DuplicateFeedback as exc:
            raise AlreadyExists(
                f"rater {submission.rater_id!r} already gave {submission.kind.value} feedback on these samples "
                f"(feedback_id {exc.existing_id})",
                exc.existing_id,
            ) from None
        except RateLimited as exc:
            retry_ms = max(1, math.ceil(exc.retry_after_s * 1000))
            raise RaterRateLimited(
                f"rater {submission.rater_id!r} reached {exc.limit} submissions per {exc.window_s:g} s; "
                f"retry after ~{retry_ms} ms",
                retry_ms,
            ) from None
