"""Human-feedback records for reward-model training, and a simulated labeler that writes more.

The three feedback forms (one JSON object per line; other keys, such as `flaw`, are
kept for people and ignored by training):

    {"prompt": ..., "chosen": ..., "rejected": ..., "margin": 0.0}   pairwise (margin optional)
    {"prompt": ..., "ranking": [best, ..., worst]}                  ranked list, K >= 2
    {"prompt": ..., "completion": ..., "rating": 7.0}               pointwise rating

The simulated labeler stands in for human raters on book-review prompts. Its hidden
preference function (`SimulatedLabeler.utility`, which a reward model never sees; the one
simulated-preference model in simulated_preference.py, which the online users share)
prefers reviews that are specific to the book asked about, well formed and free of
filler: it rewards coverage of the book's own reference review, penalizes vague
words, truncation, broken casing or punctuation, repetition loops and wrong length.
`CandidateWriter` produces the completions it judges: good ones (the reference
review, or it with a sentence left out) and flawed ones of seven kinds, whose
templates below were written for this project. Pairs are kept only when the
utility gap is at least `min_gap`, so the preferred review is plainly better;
`noise_temperature` > 0 makes the labeler err like a person (Bradley-Terry noise).

The shipped data were generated with `rlhf-reward simulate-preferences` and:

    --prompts-file data/book_reviews.jsonl         --format pairwise --per-prompt 6 --seed 0
        --output data/preferences.jsonl
    --prompts-file data/book_reviews_heldout.jsonl --format pairwise --per-prompt 6 --seed 1
        --output data/preferences_heldout.jsonl
    --prompts-file data/book_reviews.jsonl         --format ranked   --per-prompt 2 --seed 2
        --output data/preferences_ranked.jsonl
    --prompts-file data/book_reviews.jsonl         --format ratings  --per-prompt 4 --seed 3
        --output data/preferences_ratings.jsonl

The held-out file comes from the held-out prompts: books a trained model never saw.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import load_config, option
from services.common.prompts import PromptRow, load_prompts
from services.reward.training.simulated_preference import SimulatedLabeler, sentences, title_of

# ---- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairwisePreference:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


@dataclass(frozen=True)
class RankedPreference:
    prompt: str
    ranking: tuple[str, ...]  # best first


@dataclass(frozen=True)
class Rating:
    prompt: str
    completion: str
    rating: float


Feedback = PairwisePreference | RankedPreference | Rating


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {value!r}")
    return value


def _number(record: dict[str, Any], key: str, default: float | None = None) -> float:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def parse_feedback(record: Any) -> Feedback:
    """One JSON object as a feedback record; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    forms = [key for key in ("chosen", "ranking", "rating") if key in record]
    if len(forms) != 1:
        raise ValueError(
            "expected exactly one of 'chosen'+'rejected' (pairwise), 'ranking' (ranked list) or "
            f"'completion'+'rating' (rating); got keys {sorted(record)}"
        )
    prompt = _text(record, "prompt")
    if forms == ["chosen"]:
        chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
        if chosen == rejected:
            raise ValueError("chosen and rejected are the same text")
        return PairwisePreference(prompt, chosen, rejected, _number(record, "margin", 0.0))
    if forms == ["ranking"]:
        ranking = record["ranking"]
        if not isinstance(ranking, list) or len(ranking) < 2 or not all(isinstance(t, str) for t in ranking):
            raise ValueError(f"'ranking' must be a list of at least 2 strings (best first), got {ranking!r}")
        if len(set(ranking)) != len(ranking):
            raise ValueError("'ranking' lists a completion twice")
        return RankedPreference(prompt, tuple(ranking))
    return Rating(prompt, _text(record, "completion"), _number(record, "rating"))


def load_feedback(path: str | Path) -> list[Feedback]:
    """Every record of a JSONL file; errors name the file and line."""
    records: list[Feedback] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(parse_feedback(json.loads(line)))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{number}: {exc}") from exc
    if not records:
        raise ValueError(f"{path}: no feedback records")
    return records


def feedback_to_json(record: Feedback, **extra: Any) -> dict[str, Any]:
    if isinstance(record, PairwisePreference):
        body: dict[str, Any] = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
        if record.margin:
            body["margin"] = record.margin
    elif isinstance(record, RankedPreference):
        body = {"prompt": record.prompt, "ranking": list(record.ranking)}
    else:
        body = {"prompt": record.prompt, "completion": record.completion, "rating": record.rating}
    return {**body, **extra}


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path | None) -> int:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    text = "".join(line + "\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    return len(lines)


# ---- candidate completions ----------------------------------------------------------------

GENERIC_REVIEWS = (
    "{title} is a really good book and I enjoyed reading it a lot. The story is interesting and the characters "
    "are nice. I would recommend it to anyone who likes reading good books.",
    "I liked {title} very much. It was a great read with a lot of interesting things going on. The writing was "
    "good and the ending was nice. Overall a very good book that everyone should read.",
    "This is one of the best books I have ever read. It has a great story, great characters and a great ending. "
    "I really enjoyed it and I think you will enjoy it too.",
    "{title} was an amazing book. There is a lot going on and all of it is very interesting. The author did a "
    "great job and I would definitely read it again.",
    "Overall I thought the book was good. Some parts were better than others but it was still a nice read. I "
    "would give it a good rating and recommend it to friends.",
    "It is a classic for a reason. The story is good, the characters are interesting and the themes are "
    "important. Everyone should read it at least once in their life.",
    "I really enjoyed {title}. It was fun, exciting and interesting all the way through. The characters were "
    "great and the story kept me reading. Definitely a book worth your time.",
    "This book is very good. I liked the story and I liked the characters. There were a lot of good parts and "
    "not many bad parts. I think most people would like it.",
    "What a great book! {title} has everything you want in a story. It is interesting, well written and "
    "enjoyable. I would recommend it to anyone looking for something good to read.",
    "{title} is a nice book with a good story. It has some interesting ideas and some fun moments. I enjoyed "
    "reading it and I think it is worth reading for anyone.",
    "A wonderful book that I liked a lot. The plot was interesting and the writing was good. It made me think "
    "about a lot of things. Highly recommended for everyone.",
    "I thought {title} was pretty good overall. The beginning was a little slow but it got better. The "
    "characters were interesting and the ending was good. I would read more books like this.",
)

SHORT_REPLIES = (
    "Good book.",
    "It was fine, I guess.",
    "{title}? Loved it!",
    "Not bad.",
    "Read it, it's good.",
    "Five stars.",
    "Boring.",
    "A classic. Everyone knows it.",
    "I liked {title}.",
    "Meh.",
)

IRRELEVANT_REPLIES = (
    "I'm sorry, but I can't help with that request. Is there anything else you would like to talk about today?",
    "Here is a simple pancake recipe: mix one cup of flour, one egg and a cup of milk, then fry small rounds in "
    "butter until golden on both sides.",
    "The weather this week will be mild, with light rain on Tuesday and sunshine returning by the weekend. "
    "Remember to bring an umbrella just in case.",
    "To reset your password, open the settings page, choose Security, and follow the link we send to your "
    "registered email address.",
    "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to produce glucose "
    "and oxygen.",
    "As an AI language model, I do not have personal opinions about books or anything else.",
    "The quarterly report shows revenue growth of four percent, driven mainly by strong sales in the northern region.",
    "Sure! Here are ten fun facts about octopuses: they have three hearts, blue blood, and can change color in "
    "an instant.",
)

FLAWS = ("generic", "off_topic", "truncated", "repetitive", "short", "irrelevant", "unpunctuated")


class CandidateWriter:
    """Good and flawed completions for a prompt row (which carries the book's reference review)."""

    def __init__(self, rows: Sequence[PromptRow]) -> None:
        missing = [row.prompt for row in rows if not row.reference]
        if missing:
            raise ValueError(f"every prompt needs a reference review; missing for {missing[:3]}")
        if len(rows) < 2:
            raise ValueError("need at least 2 prompts (off-topic completions come from other books)")
        self.rows = list(rows)

    def good(self, row: PromptRow, rng: random.Random) -> str:
        parts = sentences(row.reference or "")
        if len(parts) >= 3 and rng.random() < 0.5:
            del parts[rng.randrange(1, len(parts))]
        return " ".join(parts)

    def flawed(self, row: PromptRow, flaw: str, rng: random.Random) -> str:
        reference, title = row.reference or "", title_of(row.prompt)
        words = reference.split()
        if flaw == "generic":
            return rng.choice(GENERIC_REVIEWS).format(title=title)
        if flaw == "short":
            return rng.choice(SHORT_REPLIES).format(title=title)
        if flaw == "irrelevant":
            return rng.choice(IRRELEVANT_REPLIES)
        if flaw == "off_topic":
            other = rng.choice([r for r in self.rows if r.reference != reference])
            return other.reference or ""
        if flaw == "truncated":
            cut = max(4, int(len(words) * rng.uniform(0.3, 0.6)))
            return " ".join(words[:cut]).rstrip(".,;:!?")
        if flaw == "repetitive":
            loop = " ".join(words[: rng.randint(4, 7)]).rstrip(".,;:!?")
            return " ".join([loop] * rng.randint(5, 8))
        if flaw == "unpunctuated":
            return re.sub(r"[^\w\s']", "", reference).lower()
        raise ValueError(f"unknown flaw {flaw!r}; known: {list(FLAWS)}")


# ---- generating data --------------------------------------------------------------------


def _flawed_candidate(
    writer: CandidateWriter,
    labeler: SimulatedLabeler,
    row: PromptRow,
    good: str,
    flaw: str,
    rng: random.Random,
    min_gap: float,
) -> tuple[str, str] | None:
    """A completion with `flaw` (or the next flaws) at least `min_gap` worse than `good`."""
    for attempt in range(len(FLAWS)):
        kind = FLAWS[(FLAWS.index(flaw) + attempt) % len(FLAWS)]
        for _ in range(3):
            bad = writer.flawed(row, kind, rng)
            if bad != good and labeler.utility(row.prompt, good) - labeler.utility(row.prompt, bad) >= min_gap:
                return bad, kind
    return None


def generate_pairwise(
    rows: Sequence[PromptRow], per_prompt: int, seed: int, noise_temperature: float = 0.0, min_gap: float = 1.5
) -> list[dict[str, Any]]:
    """`per_prompt` pairs per prompt, cycling through the flaw kinds so they are balanced."""
    rng, writer = random.Random(seed), CandidateWriter(rows)
    labeler = SimulatedLabeler(rows, noise_temperature)
    records = []
    for index, row in enumerate(rows):
        for j in range(per_prompt):
            good = writer.good(row, rng)
            found = _flawed_candidate(writer, labeler, row, good, FLAWS[(index + j) % len(FLAWS)], rng, min_gap)
            if found is None:
                continue
            bad, kind = found
            first, second = (good, bad) if labeler.prefers_first(row.prompt, good, bad, rng) else (bad, good)
            records.append(feedback_to_json(PairwisePreference(row.prompt, first, second), flaw=kind))
    return records


def generate_ranked(
    rows: Sequence[PromptRow], per_prompt: int, k: int, seed: int, noise_temperature: float = 0.0
) -> list[dict[str, Any]]:
    """Lists of one good and k-1 flawed completions (distinct flaw kinds), ranked by the labeler."""
    if not 2 <= k <= len(FLAWS) + 1:
        raise ValueError(f"k must be in [2, {len(FLAWS) + 1}], got {k}")
    rng, writer = random.Random(seed), CandidateWriter(rows)
    labeler = SimulatedLabeler(rows, noise_temperature)
    records = []
    for row in rows:
        for _ in range(per_prompt):
            candidates = [writer.good(row, rng)]
            for flaw in rng.sample(FLAWS, k - 1):
                bad = writer.flawed(row, flaw, rng)
                if bad not in candidates:
                    candidates.append(bad)
            if len(candidates) >= 2:
                ranking = tuple(labeler.rank(row.prompt, candidates, rng))
                records.append(feedback_to_json(RankedPreference(row.prompt, ranking)))
    return records


def generate_ratings(
    rows: Sequence[PromptRow], per_prompt: int, seed: int, noise_temperature: float = 0.0
) -> list[dict[str, Any]]:
    """Per prompt, one good and per_prompt-1 flawed completions, each rated 1-10."""
    rng, writer = random.Random(seed), CandidateWriter(rows)
    labeler = SimulatedLabeler(rows, noise_temperature)
    records = []
    for index, row in enumerate(rows):
        completions = [writer.good(row, rng)]
        completions += [writer.flawed(row, FLAWS[(index + j) % len(FLAWS)], rng) for j in range(per_prompt - 1)]
        for completion in dict.fromkeys(completions):
            rating = labeler.rate(row.prompt, completion, rng)
            records.append(feedback_to_json(Rating(row.prompt, completion, rating)))
    return records


@dataclass(frozen=True)
class SimulateConfig:
    """Write preference data judged by the simulated labeler (see services/reward/training/preferences.py)."""

    prompts_file: str = option("data/book_reviews.jsonl", "JSONL prompts with reference reviews to write about.")
    output: str = option("", "JSONL file to write; empty = standard output.")
    format: str = option("pairwise", "pairwise | ranked | ratings.")
    per_prompt: int = option(6, "Records per prompt (ratings: completions rated per prompt).")
    k: int = option(4, "Completions per ranked list (format=ranked).")
    noise_temperature: float = option(
        0.0, "Labeler noise: Bradley-Terry temperature for choices, rating noise std in points; 0 = noiseless."
    )
    min_gap: float = option(1.5, "Pairwise: keep pairs only when the preferred one is this much better (utility).")
    seed: int = option(0, "Random seed; the same seed and inputs give the same file.")

    def __post_init__(self) -> None:
        if self.format not in ("pairwise", "ranked", "ratings"):
            raise ValueError(f"format must be pairwise, ranked or ratings, got {self.format!r}")
        if self.per_prompt < 1:
            raise ValueError(f"per_prompt must be >= 1, got {self.per_prompt}")


def simulate(config: SimulateConfig) -> list[dict[str, Any]]:
    rows = load_prompts(config.prompts_file)
    if config.format == "pairwise":
        return generate_pairwise(rows, config.per_prompt, config.seed, config.noise_temperature, config.min_gap)
    if config.format == "ranked":
        return generate_ranked(rows, config.per_prompt, config.k, config.seed, config.noise_temperature)
    return generate_ratings(rows, config.per_prompt, config.seed, config.noise_temperature)


def main(argv: list[str]) -> None:
    """`rlhf-reward simulate-preferences [flags]`."""
    config = load_config(SimulateConfig, argv, "RLHF_SIMULATE_", prog="rlhf-reward simulate-preferences")
    count = write_jsonl(simulate(config), config.output or None)
    if config.output:
        print(f"wrote {count} {config.format} records to {config.output}", file=sys.stderr)
