"""The one simulated-preference model: the labeler's and the online users' judgements come from the same class."""

from __future__ import annotations

import pytest

from services.common.prompts import PromptRow
from services.reward.training.simulated_preference import (
    LABELER_SPEC,
    HiddenPreference,
    PreferenceSpec,
    SimulatedLabeler,
)

PROMPT = "Write a short review of Pride and Prejudice by Jane Austen."
REFERENCE = (
    "Austen's novel follows Elizabeth Bennet as she misjudges the proud Mr Darcy. Its sharp dialogue skewers "
    "marriage, money and class in Regency England. Elizabeth's slow recognition of her own prejudice makes the "
    "ending earned rather than sentimental."
)


def test_the_labeler_is_the_hidden_preference_under_its_spec():
    labeler = SimulatedLabeler([PromptRow(PROMPT, REFERENCE)])
    assert isinstance(labeler.preference, HiddenPreference) and labeler.preference.spec == LABELER_SPEC
    same = HiddenPreference(LABELER_SPEC, {PROMPT: REFERENCE})
    for text in (REFERENCE, "Good book.", "nice " * 50, ""):
        assert labeler.utility(PROMPT, text) == same.utility(PROMPT, text)
    assert labeler.utility(PROMPT, REFERENCE) > 5 > 2 > labeler.utility(PROMPT, "I liked it, a really good book.")
    assert labeler.utility(PROMPT, "") == -10.0


def test_the_users_spec_is_normalized_and_the_labelers_is_not():
    users = HiddenPreference()
    for text in (REFERENCE, "Pride Prejudice " * 30, "x"):
        assert 0.0 <= users.utility(PROMPT, text) <= 1.0
    assert set(users.terms(PROMPT, REFERENCE)) == {"title", "length", "diversity"}
    assert set(HiddenPreference(LABELER_SPEC, {PROMPT: REFERENCE}).terms(PROMPT, REFERENCE)) == {
        "coverage",
        "precision",
        "formed",
        "vague",
        "repeats",
        "length_penalty",
    }


def test_reference_terms_need_references_and_weights_are_checked():
    with pytest.raises(ValueError, match="reference reviews"):
        HiddenPreference(LABELER_SPEC)
    with pytest.raises(ValueError, match="weights >= 0"):
        PreferenceSpec(vague_weight=-1.0)
    with pytest.raises(ValueError, match="positive sum"):
        PreferenceSpec(title_weight=0, length_weight=0, diversity_weight=0, repeats_weight=1.0)
