"""Rule-based reward on hand-computed examples, and its validation."""

from __future__ import annotations

import pytest

from services.reward.backend import RewardItem
from services.reward.rules import RulesConfig, RulesReward


def _score(rules: RulesConfig, *completions: str) -> list[float]:
    return RulesReward("r", rules).score([RewardItem(prompt="ignored", completion=c) for c in completions])


def test_length_term_peaks_at_target_and_falls_linearly():
    rules = RulesConfig(target_words=4)
    assert _score(rules, "a b c d", "a b", "a b c d e f", "", "a b c d e f g h i") == pytest.approx(
        [1.0, 0.5, 0.5, 0.0, 0.0]
    )


def test_length_weight_scales_the_length_term():
    assert _score(RulesConfig(target_words=2, length_weight=3.0), "one") == pytest.approx([1.5])


def test_required_and_banned_words_count_once_each_and_ignore_case():
    rules = RulesConfig(required_words=("book", "read"), required_weight=0.5, banned_words=("hate",), banned_weight=2.0)
    assert _score(
        rules, "Read this BOOK, book lovers", "I hate hate HATE it", "nothing here", "read a book I hate"
    ) == (pytest.approx([1.0, -2.0, 0.0, -1.0]))


def test_words_match_whole_words_only():
    assert _score(RulesConfig(required_words=("book",)), "bookshelf notebook", "the book.") == [0.0, 1.0]


def test_case_sensitive_matching():
    assert _score(RulesConfig(required_words=("Book",), case_sensitive=True), "book", "Book") == [0.0, 1.0]


def test_all_terms_combine():
    rules = RulesConfig(target_words=10, required_words=("book",), banned_words=("hate",))
    # 5 words: length 0.5; "book" +1; "hate" -1.
    assert _score(rules, "hate this book so much") == pytest.approx([0.5])


def test_version_is_a_hash_of_the_rules():
    a = RulesReward("a", RulesConfig(target_words=10))
    assert len(a.version) == 12
    assert a.version == RulesReward("other-name", RulesConfig(target_words=10)).version
    assert a.version != RulesReward("a", RulesConfig(target_words=11)).version
    assert not a.uses_reference and a.kind == "rules"
    assert "10 words" in a.description


def test_from_table_reads_toml_values():
    rules = RulesConfig.from_table({"target_words": 60, "required_words": ["book"], "banned_weight": 2})
    assert rules == RulesConfig(target_words=60, required_words=("book",), banned_weight=2.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"target_words": 5, "max_words": 9}, "unknown rules keys \\['max_words'\\]"),
        ({"target_words": "60"}, "target_words must be an integer"),
        ({"target_words": True}, "target_words must be an integer"),
        ({"target_words": -1}, "target_words must be >= 0"),
        ({}, "declares no rules"),
        ({"required_words": "book"}, "required_words must be a list of strings"),
        ({"banned_words": ["two words"]}, "single words"),
        ({"required_words": ["a", "a"]}, "lists a word twice"),
        ({"required_words": ["Book"], "banned_words": ["book"]}, "both required and banned"),
        ({"target_words": 5, "banned_weight": -1}, "banned_weight must be a finite number >= 0"),
        ({"target_words": 5, "case_sensitive": "yes"}, "case_sensitive must be true or false"),
    ],
)
def test_invalid_rules_are_rejected(table, message):
    with pytest.raises(ValueError, match=message):
        RulesConfig.from_table(table)
