"""Feedback records, the shipped preference data and the simulated labeler."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from services.common.prompts import load_prompts
from services.reward.training.preferences import (
    FLAWS,
    CandidateWriter,
    PairwisePreference,
    RankedPreference,
    Rating,
    SimulateConfig,
    SimulatedLabeler,
    load_feedback,
    parse_feedback,
    simulate,
    title_of,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SHIPPED = {
    "preferences.jsonl": ("book_reviews.jsonl", "pairwise", 6, 0),
    "preferences_heldout.jsonl": ("book_reviews_heldout.jsonl", "pairwise", 6, 1),
    "preferences_ranked.jsonl": ("book_reviews.jsonl", "ranked", 2, 2),
    "preferences_ratings.jsonl": ("book_reviews.jsonl", "ratings", 4, 3),
}


@pytest.fixture(scope="module")
def rows():
    return load_prompts(DATA / "book_reviews.jsonl") + load_prompts(DATA / "book_reviews_heldout.jsonl")


def test_parse_each_form():
    assert parse_feedback({"prompt": "p", "chosen": "a", "rejected": "b", "flaw": "x"}) == PairwisePreference(
        "p", "a", "b"
    )
    assert parse_feedback({"prompt": "p", "ranking": ["a", "b", "c"]}) == RankedPreference("p", ("a", "b", "c"))
    assert parse_feedback({"prompt": "p", "completion": "a", "rating": 3}) == Rating("p", "a", 3.0)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "expected a JSON object"),
        ({"prompt": "p"}, "expected exactly one of"),
        ({"prompt": "p", "chosen": "a", "ranking": ["a", "b"]}, "expected exactly one of"),
        ({"prompt": "p", "chosen": "a"}, "'rejected' must be a string"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "the same text"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a finite number"),
        ({"prompt": "p", "ranking": ["a"]}, "at least 2 strings"),
        ({"prompt": "p", "ranking": ["a", "a"]}, "twice"),
        ({"prompt": "p", "completion": "a", "rating": float("nan")}, "'rating' must be a finite number"),
        ({"chosen": "a", "rejected": "b"}, "'prompt' must be a string"),
    ],
)
def test_invalid_records(record, message):
    with pytest.raises(ValueError, match=message):
        parse_feedback(record)


def test_load_feedback_names_the_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\nnot json\n')
    with pytest.raises(ValueError, match="f.jsonl:3"):
        load_feedback(path)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_data_is_what_the_documented_command_generates(name):
    prompts, form, per_prompt, seed = SHIPPED[name]
    config = SimulateConfig(prompts_file=str(DATA / prompts), format=form, per_prompt=per_prompt, seed=seed)
    shipped = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    assert simulate(config) == shipped
    assert len(load_feedback(DATA / name)) == len(shipped)


def test_shipped_pairs_are_plainly_better_balanced_and_held_out_books_are_unseen(rows):
    labeler = SimulatedLabeler(rows)
    train = [json.loads(line) for line in (DATA / "preferences.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (DATA / "preferences_heldout.jsonl").read_text().splitlines()]
    for record in train + heldout:
        gap = labeler.utility(record["prompt"], record["chosen"]) - labeler.utility(
            record["prompt"], record["rejected"]
        )
        assert gap >= 1.5, record
    kinds = [r["flaw"] for r in train]
    assert set(kinds) == set(FLAWS) and max(map(kinds.count, FLAWS)) - min(map(kinds.count, FLAWS)) <= 2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}


def test_every_prompt_has_a_title(rows):
    assert all(title_of(row.prompt) != "this book" for row in rows)
    assert title_of("Give me a brief review of The Time Machine by H. G. Wells.") == "The Time Machine"
    assert title_of("Review the Iliad in two or three sentences.") == "The Iliad"


def test_the_labeler_prefers_the_reference_to_every_flaw(rows):
    labeler, writer, rng = SimulatedLabeler(rows), CandidateWriter(rows), random.Random(0)
    for row in rows:
        good = labeler.utility(row.prompt, row.reference)
        for flaw in FLAWS:
            assert good - labeler.utility(row.prompt, writer.flawed(row, flaw, rng)) > 1.0, (row.prompt, flaw)


def test_noise_makes_the_labeler_err_sometimes(rows):
    row = rows[0]
    writer, rng = CandidateWriter(rows), random.Random(0)
    truncated = writer.flawed(row, "truncated", rng)
    noisy = SimulatedLabeler(rows, noise_temperature=3.0)
    picks = [noisy.prefers_first(row.prompt, row.reference, truncated, rng) for _ in range(300)]
    assert 0.5 < sum(picks) / len(picks) < 0.95
    exact = SimulatedLabeler(rows)
    assert all(exact.prefers_first(row.prompt, row.reference, truncated, rng) for _ in range(20))


def test_ranked_and_rated_records_order_good_before_flawed(rows):
    labeler, rng = SimulatedLabeler(rows), random.Random(0)
    ranked = simulate(
        SimulateConfig(prompts_file=str(DATA / "book_reviews_heldout.jsonl"), format="ranked", k=4, seed=5)
    )
    for record in ranked:
        utilities = [labeler.utility(record["prompt"], text) for text in record["ranking"]]
        assert utilities == sorted(utilities, reverse=True) and len(record["ranking"]) == 4
    assert 1.0 <= labeler.rate(rows[0].prompt, "Meh.", rng) < labeler.rate(rows[0].prompt, rows[0].reference, rng) <= 10
