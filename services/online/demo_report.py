"""What the online demo reports: hidden utility per version with intervals, reward-model accuracy, a plot.

The simulator knows the truth the feedback estimates (`HiddenPreference`), so the demo
can say what no deployment can: how good each served version really was, and how
well the reward model ranks completions it never trained on. Intervals are normal
95% intervals over served samples (each sample one draw; two samples of one request
share a prompt, so they are slightly optimistic).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

from rlhf.v1 import reward_pb2
from services.reward.training.simulated_preference import HiddenPreference

log = logging.getLogger(__name__)

Z95 = 1.959964


def utility_by_version(by_replica_version: dict) -> list[dict]:
    """Hidden utility of what each version served, both replicas together: mean, 95% interval, n."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for key, tally in by_replica_version.items():
        version = int(key.rsplit(":v", 1)[1])
        if tally["samples"]:
            entry = sums[version]
            entry[0] += tally["samples"]
            entry[1] += tally["mean_hidden_utility"] * tally["samples"]
            entry[2] += tally["hidden_utility_sq_sum"]
    rows = []
    for version, (n, total, squares) in sorted(sums.items()):
        mean = total / n
        variance = max(0.0, squares / n - mean * mean) * n / max(1, n - 1)
        half = Z95 * math.sqrt(variance / n)
        rows.append(
            {
                "version": version,
                "mean": round(mean, 4),
                "ci_low": round(mean - half, 4),
                "ci_high": round(mean + half, 4),
                "n": int(n),
                "variance": round(variance, 6),
            }
        )
    return rows


def difference(later: dict, earlier: dict) -> dict:
    """later - earlier with a Welch 95% interval (independent samples)."""
    diff = later["mean"] - earlier["mean"]
    half = Z95 * math.sqrt(later["variance"] / later["n"] + earlier["variance"] / earlier["n"])
    return {
        "from_version": earlier["version"],
        "to_version": later["version"],
        "difference": round(diff, 4),
        "ci_low": round(diff - half, 4),
        "ci_high": round(diff + half, 4),
        "n_from": earlier["n"],
        "n_to": later["n"],
    }


def reward_model_accuracy(
    scorer, model: str, pairs: list[dict], preference: HiddenPreference, gold_min_gap: float
) -> dict:
    """Pairwise accuracy of the hosted reward model on held-out pairs.

    `hidden_accuracy`: it ranks the pair as the simulator's hidden utility does (pairs
    with equal utility skipped). `gold_agreement`: the same on the clear pairs (utility
    gap >= gold_min_gap), the only ones the simulated gold expert answers. `rater_accuracy`:
    it agrees with the store's denoised direction (what it was trained to predict).
    """
    if not pairs:
        return {
            "pairs": 0,
            "hidden_accuracy": None,
            "hidden_pairs": 0,
            "gold_agreement": None,
            "gold_pairs": 0,
            "rater_accuracy": None,
        }
    items = [
        reward_pb2.ScoreItem(prompt=p["prompt"], completion=text)
        for p in pairs
        for text in (p["chosen"], p["rejected"])
    ]
    scores = []
    for start in range(0, len(items), 256):
        scores += list(scorer.score(model, items[start : start + 256]).scores)
    hidden = gold = rater = hidden_n = gold_n = 0
    for i, pair in enumerate(pairs):
        margin = scores[2 * i] - scores[2 * i + 1]  # > 0: the model agrees with the store's choice
        gap = preference.utility(pair["prompt"], pair["chosen"]) - preference.utility(pair["prompt"], pair["rejected"])
        rater += margin > 0
        if gap != 0:
            hidden_n += 1
            hidden += (margin > 0) == (gap > 0)
        if abs(gap) >= gold_min_gap:
            gold_n += 1
            gold += (margin > 0) == (gap > 0)
    return {
        "pairs": len(pairs),
        "hidden_accuracy": round(hidden / hidden_n, 4) if hidden_n else None,
        "hidden_pairs": hidden_n,
        "gold_agreement": round(gold / gold_n, 4) if gold_n else None,
        "gold_pairs": gold_n,
        "rater_accuracy": round(rater / len(pairs), 4),
    }


def proxy_by_version(scorer, model: str, reader, per_version: int = 64) -> dict[int, float]:
    """Mean score of the final reward model on rated samples each version served (the proxy the RL optimizes)."""
    texts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for page in reader.ratings(0):
        for rating in page.ratings:
            bucket = texts[int(rating.weight_version)]
            if len(bucket) < per_version and rating.prompt_text:
                bucket.append((rating.prompt_text, rating.completion_text))
    proxy = {}
    for version, pairs in sorted(texts.items()):
        reply = scorer.score(model, [reward_pb2.ScoreItem(prompt=p, completion=c) for p, c in pairs])
        proxy[version] = round(sum(reply.scores) / len(reply.scores), 4)
    return proxy


def plot(utility: list[dict], proxy: dict[int, float], decisions: list[dict], path: Path) -> Path | None:
    """Hidden utility (with 95% intervals) and proxy reward per version, canary verdicts marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a declared dependency; say so instead of failing the whole demo
        log.warning("matplotlib is not installed: no plot")
        return None
    verdicts = {d["candidate_version"]: d["action"] for d in decisions}
    versions = [row["version"] for row in utility]
    fig, left = plt.subplots(figsize=(8, 4.5))
    means = [row["mean"] for row in utility]
    errors = [[row["mean"] - row["ci_low"] for row in utility], [row["ci_high"] - row["mean"] for row in utility]]
    left.errorbar(versions, means, yerr=errors, fmt="o-", color="tab:blue", capsize=3, label="hidden utility (95% CI)")
    for version, mean in zip(versions, means):
        action = verdicts.get(version, "start" if version == 0 else "")
        if action:
            left.annotate(action, (version, mean), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    left.set_xlabel("weight version")
    left.set_ylabel("hidden utility (simulator)", color="tab:blue")
    right = left.twinx()
    if proxy:
        right.plot(list(proxy), list(proxy.values()), "s--", color="tab:orange", label="proxy reward (final RM)")
    right.set_ylabel("proxy reward (reward model score)", color="tab:orange")
    left.set_title("Online RLHF demo: hidden utility and proxy reward per version")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
