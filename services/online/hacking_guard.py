"""Reward-hacking guard: stop RL when the proxy reward rises while gold feedback falls.

RL optimizes the learned reward model (the proxy). When the policy finds what the
proxy overrates, the proxy keeps rising while what people actually want falls:
Goodhart's law, measured as reward over-optimization by Gao, Schulman & Hilton,
"Scaling laws for reward model overoptimization" (ICML 2023). A deployment's best
signal of "what people want" is gold feedback (a trusted expert's answers, here
`SubmitGoldFeedback` on interleaved pairs), which the crowd's judgements, the
reward model's training data, can drift from (adversarial or careless raters).

For each candidate the guard compares, against the stable version:
- the proxy: the mean reward-model score of completions each version served;
- gold: the candidate's win rate in gold answers on stable-vs-candidate pairs.
When the proxy gain exceeds `proxy_rise` while gold surely prefers stable (the upper
end of the gold win rate's time-uniform confidence sequence, `sequential.boundary`
at level `alpha`, is below 0.5 - `gold_drop`, on at least `min_gold` answers), the
candidate is rolled back and RL stops (the loop ends its rounds): the reward model needs a human look before
more optimization against it. Both are logged and exported as Prometheus metrics.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from rlhf.v1 import reward_pb2
from services.common.config import option
from services.online.sequential import BERNOULLI_VARIANCE_PROXY, boundary, mixture_rho

log = logging.getLogger(__name__)

HACKING_DETECTED = Counter(
    "rlhf_online_reward_hacking_detected_total",
    "Candidates rolled back because the proxy reward rose while gold feedback fell.",
)
RL_HALTED = Gauge("rlhf_online_rl_halted", "1 when the reward-hacking guard has stopped RL, else 0.")
PROXY_GAIN = Gauge("rlhf_online_proxy_reward_gain", "Last candidate's proxy reward minus the stable version's.")
GOLD_WIN_RATE = Gauge("rlhf_online_gold_win_rate", "Last candidate's win rate in gold answers against stable.")


@dataclass(frozen=True)
class GuardSettings:
    """When a rising proxy reward with falling gold feedback stops RL."""

    enabled: bool = option(True, "Check every candidate for reward hacking before it is promoted.")
    proxy_rise: float = option(
        0.05, "Proxy gain (candidate minus stable, in reward-model score units) above which gold is checked."
    )
    gold_drop: float = option(0.0, "Trip when gold surely puts the candidate's win rate below 0.5 minus this.")
    alpha: float = option(
        0.05, "Error level of the gold win rate's confidence sequence (chance noise alone trips the guard)."
    )
    min_gold: int = option(10, "Gold answers on candidate-vs-stable pairs needed before the guard can trip.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.gold_drop < 0.5 or self.min_gold < 1 or not 0.0 < self.alpha < 1.0:
            raise ValueError("gold_drop must be in [0, 0.5), alpha in (0, 1) and min_gold >= 1")


@dataclass(frozen=True)
class GuardVerdict:
    tripped: bool
    proxy_gain: float | None
    gold_win_rate: float | None
    gold_n: int
    reason: str


def check(
    proxy_candidate: float | None, proxy_baseline: float | None, gold_wins: int, gold_n: int, settings: GuardSettings
) -> GuardVerdict:
    """The guard's rule (pure, unit-tested)."""
    gain = None if proxy_candidate is None or proxy_baseline is None else proxy_candidate - proxy_baseline
    rate = gold_wins / gold_n if gold_n else None
    rho = mixture_rho(max(1.0, settings.min_gold * BERNOULLI_VARIANCE_PROXY), settings.alpha)
    high = None if rate is None else rate + boundary(gold_n * BERNOULLI_VARIANCE_PROXY, rho, settings.alpha) / gold_n
    tripped = (
        settings.enabled
        and gain is not None
        and high is not None
        and gold_n >= settings.min_gold
        and gain > settings.proxy_rise
        and high < 0.5 - settings.gold_drop
    )
    gain_text = "-" if gain is None else f"{gain:+.3f}"
    rate_text = "-" if rate is None else f"{rate:.3f} (at most {min(1.0, high):.3f})"
    reason = (
        f"proxy reward {gain_text} against stable while gold prefers the candidate in {rate_text} of {gold_n} "
        f"answers (trips at proxy > {settings.proxy_rise:+g} and gold surely < {0.5 - settings.gold_drop:g}, "
        f">= {settings.min_gold} answers)"
    )
    return GuardVerdict(tripped, gain, rate, gold_n, reason)


class ProxyScores:
    """Mean reward-model score of the completions each version served (rated samples from the store)."""

    def __init__(self, reader, scorer, model: str, per_version: int = 64) -> None:
        self.reader, self.scorer, self.model, self.per_version = reader, scorer, model, per_version
        self.cursor = 0
        self.texts: dict[int, list[tuple[str, str]]] = defaultdict(list)

    def refresh(self) -> None:
        for page in self.reader.ratings(self.cursor):
            for rating in page.ratings:
                bucket = self.texts[int(rating.weight_version)]
                if len(bucket) < self.per_version and rating.prompt_text:
                    bucket.append((rating.prompt_text, rating.completion_text))
            self.cursor = max(self.cursor, int(page.next_cursor))

    def __call__(self, version: int) -> float | None:
        """Scored with the reward model the service hosts now (the one RL optimizes next)."""
        pairs = self.texts.get(version)
        if not pairs:
            return None
        reply = self.scorer.score(self.model, [reward_pb2.ScoreItem(prompt=p, completion=c) for p, c in pairs])
        return sum(reply.scores) / len(reply.scores)


class RewardHackingGuard:
    def __init__(self, settings: GuardSettings, proxy: Callable[[int], float | None]) -> None:
        self.settings, self.proxy = settings, proxy
        self.halted = ""  # why RL stopped; empty while it runs
        RL_HALTED.set(0)

    def review(self, candidate: int, baseline: int, gold_wins: int, gold_n: int) -> GuardVerdict:
        refresh = getattr(self.proxy, "refresh", None)
        if refresh is not None:
            refresh()
        verdict = check(self.proxy(candidate), self.proxy(baseline), gold_wins, gold_n, self.settings)
        if verdict.proxy_gain is not None:
            PROXY_GAIN.set(verdict.proxy_gain)
        if verdict.gold_win_rate is not None:
            GOLD_WIN_RATE.set(verdict.gold_win_rate)
        if verdict.tripped:
            HACKING_DETECTED.inc()
            RL_HALTED.set(1)
            self.halted = f"reward hacking suspected for version {candidate}: {verdict.reason}"
            log.error("%s; rolling back and stopping RL", self.halted)
        else:
            log.info("reward-hacking guard, version %d: %s", candidate, verdict.reason)
        return verdict
