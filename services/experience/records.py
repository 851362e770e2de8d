"""Plain records that cross module boundaries (no SQLAlchemy here: the policy imports this)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Kind(str, Enum):
    """Feedback kinds as stored (the `kind` column); mirrors rlhf.v1.FeedbackKind."""

    RATING = "rating"
    THUMBS = "thumbs"
    PAIRWISE = "pairwise"
    RANKING = "ranking"
    CORRECTION = "correction"
    COMMENT = "comment"


PREFERENCE_KINDS = (Kind.PAIRWISE, Kind.RANKING, Kind.CORRECTION)
RATING_KINDS = (Kind.RATING, Kind.THUMBS)


def prompt_key(prompt_token_ids: list[int]) -> str:
    """Identity of a prompt as the model saw it: SHA-256 of its token ids.

    Two completions are "of the same prompt" when their keys match, even if they
    came from different requests (that is what pairwise feedback needs).
    """
    return hashlib.sha256(struct.pack(f"<{len(prompt_token_ids)}i", *prompt_token_ids)).hexdigest()


@dataclass
class SampleRecord:
    """One served sample, as the policy records it.

    `prompt_text` is None when the prompt came as token ids; the recorder's
    writer thread decodes it off the serving path.
    """

    sample_id: str
    request_id: str
    tenant: str
    prompt_index: int
    sample_index: int
    prompt_text: str | None
    chat_template: bool
    prompt_token_ids: list[int]
    completion_text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    weight_version: int
    created_at: float
    template: str = ""  # the prompt template the caller named (rlhf.v1.Prompt.template); "" for none

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt_token_ids)


@dataclass(frozen=True)
class StoredSample:
    """A recorded sample read back, with its position in the sample log."""

    seq: int
    sample_id: str
    request_id: str
    tenant: str
    prompt_key: str
    prompt_text: str
    chat_template: bool
    prompt_token_ids: list[int]
    completion_text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    weight_version: int
    created_at: float
    template: str = ""


@dataclass(frozen=True)
class FeedbackDraft:
    """Validated feedback about to be stored.

    `sample_ids` keep the kind's order (pairwise: chosen then rejected; ranking:
    best first). `target_key` identifies the judged samples regardless of order,
    so one rater cannot judge the same samples twice with the same kind.
    """

    kind: Kind
    rater_id: str
    tenant: str
    gold: bool
    sample_ids: tuple[str, ...]
    prompt_key: str
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def target_key(self) -> str:
        return hashlib.sha256("\0".join(sorted(self.sample_ids)).encode()).hexdigest()


@dataclass(frozen=True)
class StoredFeedback:
    """A feedback record read back, with its position in the feedback log."""

    seq: int
    feedback_id: str
    kind: Kind
    rater_id: str
    tenant: str
    gold: bool
    sample_ids: tuple[str, ...]
    prompt_key: str
    payload: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class StoreCounts:
    samples: int
    feedback: int
    feedback_by_kind: dict[Kind, int]
    raters: int
    samples_cursor: int
    feedback_cursor: int
