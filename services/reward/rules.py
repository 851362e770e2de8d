"""Rule-based reward declared in configuration: a length target plus required and banned words.

    score = length_weight * max(0, 1 - |words - target_words| / target_words)   (if target_words > 0)
          + required_weight * (number of distinct required words present)
          - banned_weight   * (number of distinct banned words present)

Words are runs of letters, digits and underscores (regex `\\w+`) of the completion;
matching ignores case unless `case_sensitive`. The version is a hash of the rules,
so changing any of them gives the model a new version.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.reward.backend import RewardItem, digest_version

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RulesConfig:
    """The rules of one `kind = "rules"` model; see the module docstring for the formula."""

    target_words: int = 0
    length_weight: float = 1.0
    required_words: tuple[str, ...] = ()
    required_weight: float = 1.0
    banned_words: tuple[str, ...] = ()
    banned_weight: float = 1.0
    case_sensitive: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RulesConfig:
        """Validates one TOML table's rule keys; raises ValueError saying what is wrong."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ValueError(f"unknown rules keys {unknown}; allowed: {sorted(allowed)}")
        values: dict[str, Any] = {}
        if "target_words" in table:
            values["target_words"] = _integer(table["target_words"], "target_words")
        for key in ("length_weight", "required_weight", "banned_weight"):
            if key in table:
                values[key] = _weight(table[key], key)
        for key in ("required_words", "banned_words"):
            if key in table:
                values[key] = _words(table[key], key)
        if "case_sensitive" in table:
            if not isinstance(table["case_sensitive"], bool):
                raise ValueError(f"case_sensitive must be true or false, got {table['case_sensitive']!r}")
            values["case_sensitive"] = table["case_sensitive"]
        return cls(**values)

    def __post_init__(self) -> None:
        if self.target_words < 0:
            raise ValueError(f"target_words must be >= 0 (0 = no length term), got {self.target_words}")
        if self.target_words == 0 and not self.required_words and not self.banned_words:
            raise ValueError("declares no rules: set target_words, required_words or banned_words")
        fold = (lambda w: w) if self.case_sensitive else str.lower
        both = sorted({fold(w) for w in self.required_words} & {fold(w) for w in self.banned_words})
        if both:
            raise ValueError(f"words both required and banned: {both}")

    def describe(self) -> str:
        parts = []
        if self.target_words:
            parts.append(
                f"{self.length_weight:g} x (1 at {self.target_words} words, linearly to 0 at 0 and "
                f"{2 * self.target_words} words)"
            )
        if self.required_words:
            parts.append(f"+{self.required_weight:g} per required word present {list(self.required_words)}")
        if self.banned_words:
            parts.append(f"-{self.banned_weight:g} per banned word present {list(self.banned_words)}")
        case = "case-sensitive" if self.case_sensitive else "case-insensitive"
        return f"Rules ({case}): " + "; ".join(parts) + "."


class RulesReward:
    """Scores completions with a `RulesConfig`; cheap, so it batches only for uniformity."""

    kind = "rules"
    uses_reference = False

    def __init__(self, name: str, rules: RulesConfig, description: str | None = None) -> None:
        self.name = name
        self.rules = rules
        self.description = description or rules.describe()
        canonical = json.dumps({"kind": self.kind, **dataclasses.asdict(rules)}, sort_keys=True)
        self.version = digest_version([canonical.encode()])
        fold = self._fold
        self._required = {fold(w) for w in rules.required_words}
        self._banned = {fold(w) for w in rules.banned_words}

    def _fold(self, word: str) -> str:
        return word if self.rules.case_sensitive else word.lower()

    def score_one(self, completion: str) -> float:
        words = [self._fold(w) for w in _WORD.findall(completion)]
        rules, present = self.rules, set(words)
        total = 0.0
        if rules.target_words:
            distance = abs(len(words) - rules.target_words) / rules.target_words
            total += rules.length_weight * max(0.0, 1.0 - distance)
        total += rules.required_weight * len(self._required & present)
        total -= rules.banned_weight * len(self._banned & present)
        return total

    def score(self, items: Sequence[RewardItem]) -> list[float]:
        return [self.score_one(item.completion) for item in items]


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _weight(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _words(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ValueError(f"{key} must be a list of strings, got {value!r}")
    bad = [w for w in value if not _WORD.fullmatch(w)]
    if bad:
        raise ValueError(f"{key}: entries must be single words (letters, digits, _), got {bad}")
    if len(set(value)) != len(value):
        raise ValueError(f"{key} lists a word twice: {value}")
    return tuple(value)
