"""What a person's click means as FeedbackService records.

The FeedbackService has no tie: its pairwise choice always names a better sample.
So a verdict on a shown pair becomes:

- A or B: a PAIRWISE choice (chosen, rejected);
- both bad: THUMBS down on each sample (the canary's rating-based quality sees it);
- tie: a COMMENT on each sample starting with "tie" (stored and auditable, but no
  preference signal, which is what a tie is);

plus, when given, the person's comment (on the chosen sample, or on A for a tie or
both bad) and corrected answer (a CORRECTION of every sample that was not preferred
to the other: the chosen one, or both). Pure functions, so the mapping is
unit-tested without servers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.v1 import feedback_pb2 as fb

A, B, TIE, BOTH_BAD = "a", "b", "tie", "both_bad"
VERDICTS = (A, B, TIE, BOTH_BAD)
TIE_PREFIX = "tie"


@dataclass(frozen=True)
class Verdict:
    choice: str  # one of VERDICTS
    comment: str = ""
    correction: str = ""

    def __post_init__(self) -> None:
        if self.choice not in VERDICTS:
            raise ValueError(f"choice must be one of {VERDICTS}, got {self.choice!r}")


def compare_bodies(
    verdict: Verdict, sample_a: str, sample_b: str, texts: dict[str, str] | None = None
) -> list[fb.FeedbackBody]:
    """FeedbackBody messages for a verdict on the pair (A, B), in submission order.

    `texts` (sample id -> completion) drops a correction equal to a sample's text,
    which the service would refuse as no correction at all.
    """
    comment, correction = verdict.comment.strip(), verdict.correction.strip()
    bodies: list[fb.FeedbackBody] = []
    if verdict.choice in (A, B):
        chosen, rejected = (sample_a, sample_b) if verdict.choice == A else (sample_b, sample_a)
        bodies.append(fb.FeedbackBody(pairwise=fb.PairwiseChoice(chosen_sample_id=chosen, rejected_sample_id=rejected)))
        if comment:
            bodies.append(fb.FeedbackBody(comment=fb.Comment(sample_id=chosen, text=comment)))
        corrected = [chosen]
    elif verdict.choice == BOTH_BAD:
        bodies.extend(fb.FeedbackBody(thumbs=fb.Thumbs(sample_id=s, up=False)) for s in (sample_a, sample_b))
        if comment:
            bodies.append(fb.FeedbackBody(comment=fb.Comment(sample_id=sample_a, text=comment)))
        corrected = [sample_a, sample_b]
    else:
        text = f"{TIE_PREFIX}: {comment}" if comment else TIE_PREFIX
        bodies.extend(fb.FeedbackBody(comment=fb.Comment(sample_id=s, text=text)) for s in (sample_a, sample_b))
        corrected = [sample_a, sample_b]
    if correction:
        for sample in corrected:
            if texts is None or texts.get(sample, "").strip() != correction:
                bodies.append(fb.FeedbackBody(correction=fb.Correction(sample_id=sample, corrected_text=correction)))
    return bodies


def rating_body(sample_id: str, stars: int, comment: str = "") -> list[fb.FeedbackBody]:
    """A 1-5 rating (and an optional comment) of one sample."""
    if not 1 <= stars <= 5:
        raise ValueError(f"rating must be 1..5, got {stars}")
    bodies = [fb.FeedbackBody(rating=fb.Rating(sample_id=sample_id, value=float(stars), scale_min=1.0, scale_max=5.0))]
    if comment.strip():
        bodies.append(fb.FeedbackBody(comment=fb.Comment(sample_id=sample_id, text=comment.strip())))
    return bodies
