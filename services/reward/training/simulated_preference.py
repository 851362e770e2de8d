"""The one simulated-preference model: a hidden utility over book reviews, and how raters err.

Both simulated judges use it: the labeler that writes reward-model training data
(`SimulatedLabeler`, `rlhf-reward simulate-preferences`) and the online loop's simulated
users (services/online/simulator.py). Neither the reward model nor the policy ever sees
the utility; they only see the ratings and choices derived from it.

`HiddenPreference.utility` is a weighted sum of named terms, each computed one way for
everybody; a `PreferenceSpec` says how much each term counts:

  title          share of the asked-about title's words the completion mentions   [0, 1]
  length         closeness to `target_words` words                                [0, 1]
  diversity      distinct words / words (no repetition)                           [0, 1]
  coverage       share of the book's reference review's content words it conveys [0, 1]
  precision      share of its content words that are the reference review's       [0, 1]
  formed         ends with punctuation, starts sentences with capitals            [0, 1]
  vague          share of filler words ("good", "nice", "really" ...)   penalty   [0, 1]
  repeats        share of repeated word trigrams (loops)                penalty   [0, 1]
  length_penalty below 30 or above 100 words                            penalty   [0, inf)

Two specs are in use. `PreferenceSpec()`, the online users' default, weighs title, length
and diversity and normalizes by their weights, so utility is in [0, 1] and noise is in those
units. `LABELER_SPEC` weighs the reference-review terms (it needs each prompt's reference
review) and is not normalized: about 6-7 for the reference review, below 2 for filler or
wrong-book text, -10 for a completion without words.

How judgements err: a `Rater` (online users) perceives utility plus Gaussian noise and may be
adversarial (reports the opposite); the labeler errs by Bradley-Terry / Plackett-Luce draws at
`noise_temperature` (0 = noiseless), the way the shipped preference data were written.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# ---- reading the prompt and the text ---------------------------------------------------------

_TITLE_PATTERNS = (
    re.compile(r"tell me what you liked about (?P<t>.+?)\.$"),
    re.compile(r"(?:review of|think of|opinion of) (?P<t>.+?)(?: by [A-Z].*?)?[?.]$"),
    re.compile(r"^Review (?P<t>.+?) in (?:a few|two or three) sentences\.$"),
    re.compile(r"(?:sentences, review|you review) (?P<t>.+?)(?: by [A-Z].*?)?[?.]$"),
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z0-9']+")  # words as the online users count them
_LETTER_WORD = re.compile(r"[A-Za-z']+")  # words as the labeler counts them
_MINOR = frozenset("a an and the of in on to for by with at from or".split())
_STOPWORDS = frozenset(
    """about above after again against also among because been before being below between both could does
    doing down during each even every from further have having here into itself just more most much must
    never only other over same should since some such than that their them then there these they this those
    through under until very what when where which while will with would your""".split()
)
VAGUE_WORDS = frozenset(
    """good great nice really very interesting liked like enjoyed enjoy amazing awesome wonderful stuff things
    thing lot fun cool okay fine pretty overall definitely recommend recommended everyone anyone""".split()
)


def title_of(prompt: str) -> str:
    """The book a prompt asks about ("this book" when no known phrasing matches)."""
    for pattern in _TITLE_PATTERNS:
        match = pattern.search(prompt)
        if match:
            title = match.group("t").strip()
            return title[0].upper() + title[1:]
    return "this book"


def title_words(prompt: str) -> set[str]:
    """Words of the book title a prompt asks about (none when the phrasing names no title)."""
    title = title_of(prompt)
    if title == "this book":
        return set()
    return {w.lower() for w in _WORD.findall(title) if w.lower() not in _MINOR}


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _LETTER_WORD.findall(text) if len(w) > 3 and w.lower() not in _STOPWORDS}


# ---- the hidden utility ----------------------------------------------------------------------

REWARD_TERMS = ("title", "length", "diversity", "coverage", "precision", "formed")
PENALTY_TERMS = ("vague", "repeats", "length_penalty")
REFERENCE_TERMS = frozenset({"coverage", "precision"})


@dataclass(frozen=True)
class PreferenceSpec:
    """How much each term of the hidden utility counts (see the module docstring); penalties are subtracted."""

    target_words: int = 40
    title_weight: float = 1.0
    length_weight: float = 1.0
    diversity_weight: float = 1.0
    coverage_weight: float = 0.0
    precision_weight: float = 0.0
    formed_weight: float = 0.0
    vague_weight: float = 0.0
    repeats_weight: float = 0.0
    length_penalty_weight: float = 0.0
    normalize: bool = True
    """Divide by the sum of the reward terms' weights, so utility is in [0, 1] when no penalty is weighed."""
    empty_utility: float | None = None
    """Utility of a completion without a word (None: computed like any other)."""

    def __post_init__(self) -> None:
        weights = [self.weight(term) for term in REWARD_TERMS + PENALTY_TERMS]
        if self.target_words < 1 or min(weights) < 0 or sum(self.weight(t) for t in REWARD_TERMS) <= 0:
            raise ValueError("target_words must be >= 1 and the weights >= 0, the reward terms' with a positive sum")

    def weight(self, term: str) -> float:
        return getattr(self, f"{term}_weight")


# The labeler that wrote the shipped preference data (data/preferences*.jsonl): needs the reference reviews.
LABELER_SPEC = PreferenceSpec(
    title_weight=0.0,
    length_weight=0.0,
    diversity_weight=0.0,
    coverage_weight=3.0,
    precision_weight=1.0,
    formed_weight=3.0,
    vague_weight=3.0,
    repeats_weight=4.0,
    length_penalty_weight=2.0,
    normalize=False,
    empty_utility=-10.0,
)


class HiddenPreference:
    """The simulated people's taste: `utility(prompt, completion)` under a `PreferenceSpec`.

    `references` maps a prompt to its book's reference review; the coverage and precision terms need it.
    """

    def __init__(self, spec: PreferenceSpec = PreferenceSpec(), references: Mapping[str, str] | None = None) -> None:
        needs = [t for t in REFERENCE_TERMS if spec.weight(t) > 0]
        if needs and references is None:
            raise ValueError(f"the {sorted(needs)} terms need the prompts' reference reviews")
        self.spec = spec
        self.references = dict(references or {})

    def terms(self, prompt: str, completion: str) -> dict[str, float]:
        """Every term the spec weighs (the online users' three by default), each as in the module docstring."""
        s = self.spec
        weighed = [t for t in REWARD_TERMS + PENALTY_TERMS if s.weight(t) > 0]
        words = [w.lower() for w in _WORD.findall(completion)]
        letter_words = _LETTER_WORD.findall(completion)
        out: dict[str, float] = {}
        if "title" in weighed:
            wanted = title_words(prompt)
            out["title"] = len(wanted & set(words)) / len(wanted) if wanted else 0.0
        if "length" in weighed:
            out["length"] = max(0.0, 1.0 - abs(len(words) - s.target_words) / s.target_words)
        if "diversity" in weighed:
            out["diversity"] = len(set(words)) / len(words) if words else 0.0
        if REFERENCE_TERMS & set(weighed):
            reference, own = _content_words(self.references[prompt]), _content_words(completion)
            out["coverage"] = len(own & reference) / max(1, len(reference))
            out["precision"] = len(own & reference) / max(1, len(own))
        if letter_words and "formed" in weighed:
            text = completion.strip()
            parts = sentences(text)
            out["formed"] = (
                0.5 * (text[-1] in ".!?")
                + 0.25 * text[0].isupper()
                + 0.25 * sum(p[0].isupper() for p in parts) / len(parts)
            )
        if letter_words and "vague" in weighed:
            out["vague"] = sum(w.lower() in VAGUE_WORDS for w in letter_words) / len(letter_words)
        if "repeats" in weighed:
            trigrams = [tuple(w.lower() for w in letter_words[i : i + 3]) for i in range(len(letter_words) - 2)]
            out["repeats"] = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
        if "length_penalty" in weighed:
            n = len(letter_words)
            out["length_penalty"] = max(0.0, (30 - n) / 30) + max(0.0, (n - 100) / 100)
        return out

    def utility(self, prompt: str, completion: str) -> float:
        s = self.spec
        if s.empty_utility is not None and not _LETTER_WORD.findall(completion):
            return s.empty_utility
        terms = self.terms(prompt, completion)
        total = 0.0
        for term in REWARD_TERMS:
            if s.weight(term) > 0:
                total += s.weight(term) * terms.get(term, 0.0)
        for term in PENALTY_TERMS:
            if s.weight(term) > 0:
                total -= s.weight(term) * terms.get(term, 0.0)
        if s.normalize:
            total /= sum(s.weight(t) for t in REWARD_TERMS)
        return total


# ---- how judgements err ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rater:
    """One simulated user's way of turning utilities into feedback (Gaussian perception noise)."""

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


class SimulatedLabeler:
    """The data labeler: the hidden preference under `LABELER_SPEC`, erring by Bradley-Terry draws.

    `rows` carry each prompt's reference review (services.common.prompts.PromptRow).
    """

    def __init__(self, rows: Sequence, noise_temperature: float = 0.0, spec: PreferenceSpec = LABELER_SPEC) -> None:
        if noise_temperature < 0:
            raise ValueError(f"noise_temperature must be >= 0, got {noise_temperature}")
        self.preference = HiddenPreference(spec, {row.prompt: row.reference or "" for row in rows})
        self.noise_temperature = noise_temperature

    def utility(self, prompt: str, completion: str) -> float:
        """Higher is better. About 6-7 for the reference review, below 2 for filler or wrong-book text."""
        return self.preference.utility(prompt, completion)

    def prefers_first(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        gap = self.utility(prompt, a) - self.utility(prompt, b)
        if self.noise_temperature == 0:
            return gap > 0
        return rng.random() < 1 / (1 + math.exp(-gap / self.noise_temperature))

    def rank(self, prompt: str, completions: Sequence[str], rng: random.Random) -> list[str]:
        """Best first. With noise, a Plackett-Luce draw over exp(utility / temperature)."""
        remaining = list(completions)
        if self.noise_temperature == 0:
            return sorted(remaining, key=lambda c: -self.utility(prompt, c))
        ranking = []
        while remaining:
            weights = [math.exp(self.utility(prompt, c) / self.noise_temperature) for c in remaining]
            ranking.append(remaining.pop(rng.choices(range(len(remaining)), weights)[0]))
        return ranking

    def rate(self, prompt: str, completion: str, rng: random.Random) -> float:
        """A 1-10 rating (with noise of `noise_temperature` points when set)."""
        noisy = self.utility(prompt, completion) + 3 + rng.gauss(0, self.noise_temperature)
        return float(min(10, max(1, round(noisy))))
