"""The simulated users' hidden preference and how their judgements err.

`HiddenPreference.utility` scores a completion in [0, 1] from three things a reader of
book reviews cares about: that it names the book asked about (the share of the
title's words it mentions), that it has about `target_words` words, and that it does
not repeat itself (distinct words / words). Neither the reward model nor the policy
ever sees it: they only see the ratings and choices `Rater`s derive from it. A rater
adds Gaussian noise of `noise` (in utility units) to what they perceive; an
adversarial rater reports the opposite of what they perceive.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from services.trainer.preferences import title_of

_WORD = re.compile(r"[A-Za-z0-9']+")
_MINOR = frozenset("a an and the of in on to for by with at from or".split())


@dataclass(frozen=True)
class PreferenceSpec:
    """Weights of the utility's terms (normalized by their sum) and the preferred length."""

    target_words: int = 40
    title_weight: float = 1.0
    length_weight: float = 1.0
    diversity_weight: float = 1.0

    def __post_init__(self) -> None:
        weights = (self.title_weight, self.length_weight, self.diversity_weight)
        if self.target_words < 1 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("target_words must be >= 1 and the weights >= 0 with a positive sum")


def title_words(prompt: str) -> set[str]:
    """Words of the book title a prompt asks about (none when the phrasing names no title)."""
    title = title_of(prompt)
    if title == "this book":
        return set()
    return {w.lower() for w in _WORD.findall(title) if w.lower() not in _MINOR}


class HiddenPreference:
    def __init__(self, spec: PreferenceSpec = PreferenceSpec()) -> None:
        self.spec = spec

    def terms(self, prompt: str, completion: str) -> dict[str, float]:
        """Each term in [0, 1]."""
        words = [w.lower() for w in _WORD.findall(completion)]
        wanted = title_words(prompt)
        title = len(wanted & set(words)) / len(wanted) if wanted else 0.0
        length = max(0.0, 1.0 - abs(len(words) - self.spec.target_words) / self.spec.target_words)
        diversity = len(set(words)) / len(words) if words else 0.0
        return {"title": title, "length": length, "diversity": diversity}

    def utility(self, prompt: str, completion: str) -> float:
        terms = self.terms(prompt, completion)
        s = self.spec
        total = s.title_weight + s.length_weight + s.diversity_weight
        return (s.title_weight * terms["title"] + s.length_weight * terms["length"] + s.diversity_weight * terms["diversity"]) / total


@dataclass(frozen=True)
class Rater:
    """One simulated person's way of turning utilities into feedback."""

    rater_id: str
    noise: float = 0.1
    adversarial: bool = False

    def perceive(self, utility: float, rng: random.Random) -> float:
        return utility + (rng.gauss(0.0, self.noise) if self.noise > 0 else 0.0)

    def rating(self, utility: float, rng: random.Random, scale: tuple[int, int] = (1, 5)) -> int:
        """A score on the integer scale; adversarial raters mirror it."""
        low, high = scale
        perceived = min(1.0, max(0.0, self.perceive(utility, rng)))
        value = low + round(perceived * (high - low))
        return low + high - value if self.adversarial else value

    def prefers_first(self, utility_a: float, utility_b: float, rng: random.Random) -> bool:
        first = self.perceive(utility_a, rng) > self.perceive(utility_b, rng)
        return first != self.adversarial
