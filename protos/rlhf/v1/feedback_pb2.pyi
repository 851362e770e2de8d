from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_KIND_UNSPECIFIED: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_RATING: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_THUMBS: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_PAIRWISE: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_RANKING: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_CORRECTION: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_COMMENT: _ClassVar[FeedbackKind]
FEEDBACK_KIND_UNSPECIFIED: FeedbackKind
FEEDBACK_KIND_RATING: FeedbackKind
FEEDBACK_KIND_THUMBS: FeedbackKind
FEEDBACK_KIND_PAIRWISE: FeedbackKind
FEEDBACK_KIND_RANKING: FeedbackKind
FEEDBACK_KIND_CORRECTION: FeedbackKind
FEEDBACK_KIND_COMMENT: FeedbackKind

class Rating(_message.Message):
    __slots__ = ("sample_id", "value", "scale_min", "scale_max")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCALE_MIN_FIELD_NUMBER: _ClassVar[int]
    SCALE_MAX_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    value: float
    scale_min: float
    scale_max: float
    def __init__(self, sample_id: _Optional[str] = ..., value: _Optional[float] = ..., scale_min: _Optional[float] = ..., scale_max: _Optional[float] = ...) -> None: ...

class Thumbs(_message.Message):
    __slots__ = ("sample_id", "up")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    up: bool
    def __init__(self, sample_id: _Optional[str] = ..., up: _Optional[bool] = ...) -> None: ...

class PairwiseChoice(_message.Message):
    __slots__ = ("chosen_sample_id", "rejected_sample_id")
    CHOSEN_SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    chosen_sample_id: str
    rejected_sample_id: str
    def __init__(self, chosen_sample_id: _Optional[str] = ..., rejected_sample_id: _Optional[str] = ...) -> None: ...

class Ranking(_message.Message):
    __slots__ = ("sample_ids",)
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sample_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("sample_id", "corrected_text")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_TEXT_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    corrected_text: str
    def __init__(self, sample_id: _Optional[str] = ..., corrected_text: _Optional[str] = ...) -> None: ...

class Comment(_message.Message):
    __slots__ = ("sample_id", "text")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    text: str
    def __init__(self, sample_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class FeedbackBody(_message.Message):
    __slots__ = ("rating", "thumbs", "pairwise", "ranking", "correction", "comment")
    RATING_FIELD_NUMBER: _ClassVar[int]
    THUMBS_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    rating: Rating
    thumbs: Thumbs
    pairwise: PairwiseChoice
    ranking: Ranking
    correction: Correction
    comment: Comment
    def __init__(self, rating: _Optional[_Union[Rating, _Mapping]] = ..., thumbs: _Optional[_Union[Thumbs, _Mapping]] = ..., pairwise: _Optional[_Union[PairwiseChoice, _Mapping]] = ..., ranking: _Optional[_Union[Ranking, _Mapping]] = ..., correction: _Optional[_Union[Correction, _Mapping]] = ..., comment: _Optional[_Union[Comment, _Mapping]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("rater_id", "body")
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    rater_id: str
    body: FeedbackBody
    def __init__(self, rater_id: _Optional[str] = ..., body: _Optional[_Union[FeedbackBody, _Mapping]] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("feedback_id", "cursor", "created_unix")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    cursor: int
    created_unix: float
    def __init__(self, feedback_id: _Optional[str] = ..., cursor: _Optional[int] = ..., created_unix: _Optional[float] = ...) -> None: ...

class FeedbackRecord(_message.Message):
    __slots__ = ("feedback_id", "cursor", "kind", "rater_id", "tenant", "gold", "created_unix", "body")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    cursor: int
    kind: FeedbackKind
    rater_id: str
    tenant: str
    gold: bool
    created_unix: float
    body: FeedbackBody
    def __init__(self, feedback_id: _Optional[str] = ..., cursor: _Optional[int] = ..., kind: _Optional[_Union[FeedbackKind, str]] = ..., rater_id: _Optional[str] = ..., tenant: _Optional[str] = ..., gold: _Optional[bool] = ..., created_unix: _Optional[float] = ..., body: _Optional[_Union[FeedbackBody, _Mapping]] = ...) -> None: ...

class ExportFeedbackRequest(_message.Message):
    __slots__ = ("since_cursor", "limit", "kinds", "rater_id")
    SINCE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    since_cursor: int
    limit: int
    kinds: _containers.RepeatedScalarFieldContainer[FeedbackKind]
    rater_id: str
    def __init__(self, since_cursor: _Optional[int] = ..., limit: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[FeedbackKind, str]]] = ..., rater_id: _Optional[str] = ...) -> None: ...

class ExportFeedbackResponse(_message.Message):
    __slots__ = ("records", "next_cursor", "has_more")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[FeedbackRecord]
    next_cursor: int
    has_more: bool
    def __init__(self, records: _Optional[_Iterable[_Union[FeedbackRecord, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

class FilterReport(_message.Message):
    __slots__ = ("records_in", "votes_in", "duplicates_collapsed", "raters_downweighted", "raters_zeroed", "votes_dropped_low_weight", "contradictions_resolved", "contradictions_dropped", "identical_dropped", "items_out", "raters")
    RECORDS_IN_FIELD_NUMBER: _ClassVar[int]
    VOTES_IN_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_COLLAPSED_FIELD_NUMBER: _ClassVar[int]
    RATERS_DOWNWEIGHTED_FIELD_NUMBER: _ClassVar[int]
    RATERS_ZEROED_FIELD_NUMBER: _ClassVar[int]
    VOTES_DROPPED_LOW_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRADICTIONS_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    CONTRADICTIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_OUT_FIELD_NUMBER: _ClassVar[int]
    RATERS_FIELD_NUMBER: _ClassVar[int]
    records_in: int
    votes_in: int
    duplicates_collapsed: int
    raters_downweighted: int
    raters_zeroed: int
    votes_dropped_low_weight: int
    contradictions_resolved: int
    contradictions_dropped: int
    identical_dropped: int
    items_out: int
    raters: _containers.RepeatedCompositeFieldContainer[RaterWeight]
    def __init__(self, records_in: _Optional[int] = ..., votes_in: _Optional[int] = ..., duplicates_collapsed: _Optional[int] = ..., raters_downweighted: _Optional[int] = ..., raters_zeroed: _Optional[int] = ..., votes_dropped_low_weight: _Optional[int] = ..., contradictions_resolved: _Optional[int] = ..., contradictions_dropped: _Optional[int] = ..., identical_dropped: _Optional[int] = ..., items_out: _Optional[int] = ..., raters: _Optional[_Iterable[_Union[RaterWeight, _Mapping]]] = ...) -> None: ...

class RaterWeight(_message.Message):
    __slots__ = ("rater_id", "weight", "agreement", "consensus_checks", "gold_checks")
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_CHECKS_FIELD_NUMBER: _ClassVar[int]
    GOLD_CHECKS_FIELD_NUMBER: _ClassVar[int]
    rater_id: str
    weight: float
    agreement: float
    consensus_checks: int
    gold_checks: int
    def __init__(self, rater_id: _Optional[str] = ..., weight: _Optional[float] = ..., agreement: _Optional[float] = ..., consensus_checks: _Optional[int] = ..., gold_checks: _Optional[int] = ...) -> None: ...

class ListPreferencesRequest(_message.Message):
    __slots__ = ("since_cursor", "limit")
    SINCE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_cursor: int
    limit: int
    def __init__(self, since_cursor: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("pair_id", "prompt_text", "prompt_token_ids", "chat_template", "chosen_text", "rejected_text", "chosen_sample_id", "rejected_sample_id", "weight", "agreement", "votes", "sources", "chosen_weight_version", "rejected_weight_version", "template")
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TEXT_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    pair_id: str
    prompt_text: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    chat_template: bool
    chosen_text: str
    rejected_text: str
    chosen_sample_id: str
    rejected_sample_id: str
    weight: float
    agreement: float
    votes: int
    sources: _containers.RepeatedScalarFieldContainer[FeedbackKind]
    chosen_weight_version: int
    rejected_weight_version: int
    template: str
    def __init__(self, pair_id: _Optional[str] = ..., prompt_text: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., chat_template: _Optional[bool] = ..., chosen_text: _Optional[str] = ..., rejected_text: _Optional[str] = ..., chosen_sample_id: _Optional[str] = ..., rejected_sample_id: _Optional[str] = ..., weight: _Optional[float] = ..., agreement: _Optional[float] = ..., votes: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[FeedbackKind, str]]] = ..., chosen_weight_version: _Optional[int] = ..., rejected_weight_version: _Optional[int] = ..., template: _Optional[str] = ...) -> None: ...

class ListPreferencesResponse(_message.Message):
    __slots__ = ("pairs", "next_cursor", "has_more", "report")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[PreferencePair]
    next_cursor: int
    has_more: bool
    report: FilterReport
    def __init__(self, pairs: _Optional[_Iterable[_Union[PreferencePair, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., has_more: _Optional[bool] = ..., report: _Optional[_Union[FilterReport, _Mapping]] = ...) -> None: ...

class ListRatingsRequest(_message.Message):
    __slots__ = ("since_cursor", "limit")
    SINCE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_cursor: int
    limit: int
    def __init__(self, since_cursor: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SampleRating(_message.Message):
    __slots__ = ("sample_id", "prompt_text", "prompt_token_ids", "chat_template", "completion_text", "score", "weight", "ratings", "weight_version", "template")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    prompt_text: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    chat_template: bool
    completion_text: str
    score: float
    weight: float
    ratings: int
    weight_version: int
    template: str
    def __init__(self, sample_id: _Optional[str] = ..., prompt_text: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., chat_template: _Optional[bool] = ..., completion_text: _Optional[str] = ..., score: _Optional[float] = ..., weight: _Optional[float] = ..., ratings: _Optional[int] = ..., weight_version: _Optional[int] = ..., template: _Optional[str] = ...) -> None: ...

class ListRatingsResponse(_message.Message):
    __slots__ = ("ratings", "next_cursor", "has_more", "report")
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ratings: _containers.RepeatedCompositeFieldContainer[SampleRating]
    next_cursor: int
    has_more: bool
    report: FilterReport
    def __init__(self, ratings: _Optional[_Iterable[_Union[SampleRating, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., has_more: _Optional[bool] = ..., report: _Optional[_Union[FilterReport, _Mapping]] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("since_cursor", "limit", "tenant", "template")
    SINCE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    since_cursor: int
    limit: int
    tenant: str
    template: str
    def __init__(self, since_cursor: _Optional[int] = ..., limit: _Optional[int] = ..., tenant: _Optional[str] = ..., template: _Optional[str] = ...) -> None: ...

class LivePrompt(_message.Message):
    __slots__ = ("prompt_text", "prompt_token_ids", "chat_template", "tenant", "samples", "last_seen_unix", "latest_weight_version", "template")
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    LATEST_WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    prompt_text: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    chat_template: bool
    tenant: str
    samples: int
    last_seen_unix: float
    latest_weight_version: int
    template: str
    def __init__(self, prompt_text: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., chat_template: _Optional[bool] = ..., tenant: _Optional[str] = ..., samples: _Optional[int] = ..., last_seen_unix: _Optional[float] = ..., latest_weight_version: _Optional[int] = ..., template: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts", "next_cursor", "has_more")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[LivePrompt]
    next_cursor: int
    has_more: bool
    def __init__(self, prompts: _Optional[_Iterable[_Union[LivePrompt, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KindCount(_message.Message):
    __slots__ = ("kind", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: FeedbackKind
    count: int
    def __init__(self, kind: _Optional[_Union[FeedbackKind, str]] = ..., count: _Optional[int] = ...) -> None: ...

class RejectionCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("samples", "feedback", "by_kind", "raters", "samples_cursor", "feedback_cursor", "rejected", "schema_revision")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    BY_KIND_FIELD_NUMBER: _ClassVar[int]
    RATERS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CURSOR_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_REVISION_FIELD_NUMBER: _ClassVar[int]
    samples: int
    feedback: int
    by_kind: _containers.RepeatedCompositeFieldContainer[KindCount]
    raters: int
    samples_cursor: int
    feedback_cursor: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectionCount]
    schema_revision: str
    def __init__(self, samples: _Optional[int] = ..., feedback: _Optional[int] = ..., by_kind: _Optional[_Iterable[_Union[KindCount, _Mapping]]] = ..., raters: _Optional[int] = ..., samples_cursor: _Optional[int] = ..., feedback_cursor: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectionCount, _Mapping]]] = ..., schema_revision: _Optional[str] = ...) -> None: ...
