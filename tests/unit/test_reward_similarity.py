"""Similarity reward on the real all-MiniLM-L6-v2 from the installed package."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.reward.backend import RewardItem  # noqa: E402
from services.reward.similarity import SimilarityReward  # noqa: E402


@pytest.fixture(scope="module")
def reward() -> SimilarityReward:
    return SimilarityReward("similarity")


def test_identical_text_scores_one_and_beats_unrelated(reward):
    text = "The cat sat quietly on the warm windowsill."
    identical, paraphrase, unrelated = reward.score(
        [
            RewardItem("p", text, reference=text),
            RewardItem("p", "A cat was sitting calmly on a sunny window ledge.", reference=text),
            RewardItem("p", "Quarterly tax filings are due in April.", reference=text),
        ]
    )
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert identical > paraphrase > unrelated


def test_each_text_is_embedded_on_its_own(reward):
    """Scores in a padded batch equal cosines of embeddings computed one text at a time."""
    pairs = [
        ("Short.", "A much longer reference sentence that needs a lot more padding than the other one."),
        ("Paris is the capital of France.", "France's capital city is Paris."),
        ("I like green apples", "Bananas are yellow"),
    ]
    batch = reward.score([RewardItem("unused prompt", c, reference=r) for c, r in pairs])
    for (completion, reference), score in zip(pairs, batch, strict=True):
        a, b = reward.embed([completion])[0], reward.embed([reference])[0]
        assert score == pytest.approx(float(a @ b), abs=1e-5)


def test_embeddings_are_unit_length(reward):
    norms = reward.embed(["one", "two words", "three words here"]).norm(dim=-1)
    assert norms.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_prompt_stands_in_for_a_missing_reference(reward):
    with_prompt, with_reference = reward.score(
        [
            RewardItem("What is the capital of France?", "Paris."),
            RewardItem("ignored", "Paris.", reference="What is the capital of France?"),
        ]
    )
    assert with_prompt == pytest.approx(with_reference, abs=1e-5)


def test_long_text_is_truncated_to_the_trained_length(reward):
    assert reward.max_length == 256
    (score,) = reward.score([RewardItem("p", "word " * 2000, reference="word " * 3000)])
    assert -1.0 <= score <= 1.0 + 1e-5


def test_metadata(reward):
    assert (reward.name, reward.kind, reward.uses_reference) == ("similarity", "similarity", True)
    assert len(reward.version) == 12 and int(reward.version, 16) >= 0
    assert reward.description
