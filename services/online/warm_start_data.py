"""The online reward model's warm-start pairs from an earlier run: what the policy served, judged by the expert.

The shipped preference files (`data/preferences.jsonl`) were written by the offline
labeler, whose taste (reference-review coverage, well-formed sentences) is not the
online users' (`PreferenceSpec`: name the book, about `target_words` words, no
repeats): a reward model trained on them ranks the policy's completions as the users
do about half the time, so RL on it does not make users happier. A deployment would
warm-start from its own earlier traffic; the demo does the same: this writes pairs of
completions the policy served to the same prompt in an earlier run (the samples its
users rated, read through that run's FeedbackService, ListRatings), each answered the way the simulated gold expert answers
(`SubmitGoldFeedback`: noise-free, clear cases only, utilities at least `min_gap`
apart). Samples are split before pairing, so no completion is in both files.
`python -m services.online.warm_start_data --feedback-address HOST:PORT` with an experience
service started on the earlier run's store (`python -m services.experience --db sqlite:///...`).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from services.clients.feedback import FeedbackReader
from services.common.config import describe, load_config, option
from services.online.simulator import SimulatorConfig
from services.reward.training.simulated_preference import HiddenPreference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartDataConfig:
    """Write the warm-start preference files from an earlier online run's recorded samples."""

    feedback_address: str = option("127.0.0.1:50071", "FeedbackService over the earlier run's experience store.")
    weight_version: int = option(0, "Only samples this weight version served (the start policy).")
    output: str = option("data/online_preferences.jsonl", "Training pairs (JSONL: prompt, chosen, rejected).")
    heldout_output: str = option("data/online_preferences_heldout.jsonl", "Held-out pairs, from other samples.")
    heldout_share: float = option(0.2, "Share of each prompt's samples kept for the held-out pairs.")
    pairs_per_prompt: int = option(12, "Most training pairs per prompt (held-out: a quarter of it).")
    target_words: int = option(15, "The users' hidden preference: words they like (the demo's target_words).")
    min_gap: float = option(0.1, "Answer only pairs whose hidden utilities differ by at least this (as gold).")
    seed: int = option(0, "Seed of the split and the pair draw.")

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_share < 1.0 or self.pairs_per_prompt < 1 or self.min_gap < 0:
            raise ValueError("heldout_share must be in (0, 1), pairs_per_prompt >= 1 and min_gap >= 0")


def judged_pairs(
    completions: list[str], prompt: str, preference: HiddenPreference, min_gap: float, limit: int, rng: random.Random
) -> list[dict]:
    """Up to `limit` (chosen, rejected) pairs of distinct completions whose utilities differ by >= min_gap."""
    scored = [(text, preference.utility(prompt, text)) for text in dict.fromkeys(completions)]
    clear = [(a, b) for a, b in itertools.combinations(scored, 2) if abs(a[1] - b[1]) >= min_gap]
    rng.shuffle(clear)
    rows = []
    for a, b in clear[:limit]:
        chosen, rejected = (a, b) if a[1] > b[1] else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen[0], "rejected": rejected[0]})
    return rows


def build(config: WarmStartDataConfig) -> dict:
    by_prompt: dict[str, list[str]] = defaultdict(list)
    reader = FeedbackReader(config.feedback_address)
    try:
        for page in reader.ratings(0):
            for sample in page.ratings:
                if sample.weight_version == config.weight_version and sample.completion_text.strip():
                    by_prompt[sample.prompt_text].append(sample.completion_text)
    finally:
        reader.close()
    preference = HiddenPreference(SimulatorConfig(target_words=config.target_words).preference())
    rng = random.Random(config.seed)
    train, heldout = [], []
    for prompt in sorted(by_prompt):
        texts = list(dict.fromkeys(by_prompt[prompt]))
        rng.shuffle(texts)
        cut = max(2, round(len(texts) * config.heldout_share))
        heldout += judged_pairs(texts[:cut], prompt, preference, config.min_gap, config.pairs_per_prompt // 4, rng)
        train += judged_pairs(texts[cut:], prompt, preference, config.min_gap, config.pairs_per_prompt, rng)
    for path, rows in ((config.output, train), (config.heldout_output, heldout)):
        Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {
        "prompts": len(by_prompt),
        "samples": sum(len(v) for v in by_prompt.values()),
        "train_pairs": len(train),
        "heldout_pairs": len(heldout),
    }
    log.info("warm-start pairs from %s: %s", config.feedback_address, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(
        WarmStartDataConfig,
        list(sys.argv[1:] if argv is None else argv),
        prog="python -m services.online.warm_start_data",
    )
    log.info("config:\n%s", describe(config))
    print(json.dumps(build(config)))


if __name__ == "__main__":
    main()
