"""The warm-start pairs are answered as the simulated users' gold expert answers: clear cases, the better one chosen."""

import random

from services.online.simulator import SimulatorConfig
from services.online.warm_start_data import judged_pairs
from services.reward.training.simulated_preference import HiddenPreference

PROMPT = "Write a short review of Emma by Jane Austen."


def test_pairs_choose_the_higher_utility_and_skip_close_calls():
    preference = HiddenPreference(SimulatorConfig(target_words=15).preference())
    completions = [
        "Emma is a witty novel about a matchmaker who learns her own heart slowly and with humour.",
        "Good good good good good.",
        "Emma is a witty novel about a matchmaker who learns her own heart slowly and with humor.",
        "I could not say anything about it, sorry.",
        "Good good good good good.",  # a duplicate completion is one candidate
    ]
    rows = judged_pairs(completions, PROMPT, preference, 0.1, 100, random.Random(0))
    assert rows, "clear pairs exist"
    for row in rows:
        gap = preference.utility(PROMPT, row["chosen"]) - preference.utility(PROMPT, row["rejected"])
        assert gap >= 0.1 and row["prompt"] == PROMPT
    texts = {(r["chosen"], r["rejected"]) for r in rows}
    assert (completions[0], completions[2]) not in texts and (completions[2], completions[0]) not in texts  # close
    assert len(rows) == len(texts) and all(r["chosen"] != r["rejected"] for r in rows)
    assert len(judged_pairs(completions, PROMPT, preference, 0.1, 2, random.Random(0))) == 2
