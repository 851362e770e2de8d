"""A sequential test on paired stable-vs-canary judgements, valid at every look.

The canary is judged on interleaved pairs: a canary user gets one completion from the
stable replica and one from the canary for the same prompt and says which is better.
Each judgement is a Bernoulli draw, 1 when the candidate wins; `p` is the candidate's
win rate against stable (0.5: as good). The loop looks at the running tally every few
seconds and stops as soon as it can, so a fixed-n test would not hold its error rate
(peeking inflates it). It uses a confidence sequence instead: intervals CS_t with

    P(there is a t with p outside CS_t) <= alpha,

so a decision taken at whatever time the data first allow it keeps its error rate.

The boundary is the two-sided normal-mixture boundary (Robbins' mixture martingale)
of Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Ann. Statist. 49(2), 2021 (eq. (14); Bernoulli draws are
sub-Gaussian with variance proxy 1/4, so the intrinsic time is V_t = t/4):

    |S_t - t p| < u(V_t),  u(v) = sqrt((v + rho) * log((v + rho) / (rho * alpha^2)))

It is the dual of the mixture SPRT of Johari, Koomen, Pekelis & Walsh, "Always valid
inference: continuous monitoring of A/B tests", Operations Research 70(3), 2022 (first
circulated 2017): a win rate p0 lies outside CS_t exactly when the mixture likelihood
ratio Lambda_t(p0) = sqrt(rho / (V_t + rho)) * exp((S_t - t p0)^2 / (2 (V_t + rho)))
reaches 1/alpha, i.e. when the always-valid p-value 1/max Lambda drops to alpha.
`rho` sets where the boundary is tightest; it is chosen for `tuned_judgements`.

Rules (`decide`):
- promote when the interval's lower end is above 0.5 - delta: the candidate is not
  delta-worse. If it is (p <= 0.5 - delta), that needs the interval to miss p, so a
  delta-worse candidate is promoted with probability at most alpha, however often
  the loop looks;
- roll back when the upper end is below 0.5: the candidate is worse than stable
  (an equal one is rolled back with probability at most alpha);
- otherwise keep collecting, until `max_judgements` (the window) or the time window
  ends: then the configured inconclusive outcome.
Both rules read the same confidence sequence, so alpha bounds the two errors together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

from services.common.config import option

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"
BERNOULLI_VARIANCE_PROXY = 0.25  # sub-Gaussian variance proxy of a {0, 1} draw


@dataclass(frozen=True)
class SequentialSettings:
    """The canary's sequential test on stable-vs-canary preferences (win rate of the candidate)."""

    alpha: float = option(
        0.05, "False-promotion rate: chance a candidate delta-worse than stable is promoted (any number of looks)."
    )
    delta: float = option(
        0.1,
        "Tolerated loss in win rate: promote once the candidate's win rate against stable is surely above 0.5 - delta.",
    )
    min_judgements: int = option(
        10, "Paired judgements before any decision (the bound holds anyway; this avoids deciding on a handful)."
    )
    max_judgements: int = option(
        1000, "The window in judgements: at this many without a decision the outcome is on_inconclusive."
    )
    tuned_judgements: int = option(
        300, "Number of judgements at which the confidence sequence is tightest (sets the mixture's rho)."
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0 or not 0.0 < self.delta < 0.5:
            raise ValueError(f"alpha must be in (0, 1) and delta in (0, 0.5), got {self.alpha}, {self.delta}")
        if not 1 <= self.min_judgements <= self.max_judgements or self.tuned_judgements < 1:
            raise ValueError("need 1 <= min_judgements <= max_judgements and tuned_judgements >= 1")

    @cached_property
    def rho(self) -> float:
        return mixture_rho(self.tuned_judgements * BERNOULLI_VARIANCE_PROXY, self.alpha)


def boundary(v: float, rho: float, alpha: float) -> float:
    """u(v): the normal-mixture radius for the sum S_t at intrinsic time v (Howard et al. 2021, eq. (14))."""
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha**2)))


def mixture_rho(v_opt: float, alpha: float) -> float:
    """The rho that makes u(v)/v smallest at v = v_opt (ternary search on log rho; u is unimodal in it)."""
    low, high = math.log(v_opt) - 12.0, math.log(v_opt) + 12.0
    for _ in range(200):
        a, b = low + (high - low) / 3, high - (high - low) / 3
        if boundary(v_opt, math.exp(a), alpha) < boundary(v_opt, math.exp(b), alpha):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


def log_mixture_ratio(wins: int, n: int, p0: float, rho: float) -> float:
    """log Lambda_n(p0), the mixture SPRT statistic of H0: p = p0 (Johari et al.); >= log(1/alpha) rejects."""
    v = n * BERNOULLI_VARIANCE_PROXY
    s = wins - n * p0
    return 0.5 * math.log(rho / (v + rho)) + s * s / (2.0 * (v + rho))


@dataclass(frozen=True)
class SequentialDecision:
    """What the test says after n judgements, with everything needed to audit it."""

    action: str  # promote, rollback or wait
    n: int  # paired judgements counted
    wins: int  # of which the candidate won
    win_rate: float | None  # wins / n
    effect: float | None  # win_rate - 0.5: the candidate's advantage over stable
    ci_low: float | None  # confidence-sequence bounds on the effect (time-uniform, level 1 - alpha)
    ci_high: float | None
    statistic: float | None  # log mixture likelihood ratio of the null that decided (or the nearer one while waiting)
    threshold: float  # log(1 / alpha): the statistic crosses it when the test rejects
    reason: str

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def decide(
    wins: int, n: int, settings: SequentialSettings, window_over: bool = False, on_inconclusive: str = ROLLBACK
) -> SequentialDecision:
    """The rollout decision from `wins` of `n` paired judgements (pure: unit-tested against the simulator)."""
    if not 0 <= wins <= n:
        raise ValueError(f"wins must be in [0, n], got {wins} of {n}")
    threshold = math.log(1.0 / settings.alpha)
    window_over = window_over or n >= settings.max_judgements
    if n == 0:
        action = on_inconclusive if window_over else WAIT
        return SequentialDecision(
            action,
            0,
            0,
            None,
            None,
            None,
            None,
            None,
            threshold,
            "no paired judgements" + (" within the window" if window_over else " yet"),
        )
    s, rho = settings, settings.rho
    rate = wins / n
    radius = boundary(n * BERNOULLI_VARIANCE_PROXY, rho, s.alpha) / n
    low, high = max(0.0, rate - radius), min(1.0, rate + radius)
    floor = 0.5 - s.delta
    promote_stat = log_mixture_ratio(wins, n, floor, rho) if rate > floor else -math.inf
    rollback_stat = log_mixture_ratio(wins, n, 0.5, rho) if rate < 0.5 else -math.inf
    summary = (
        f"candidate won {wins} of {n} paired judgements ({rate:.3f}); win rate in [{low:.3f}, {high:.3f}] "
        f"at level {1 - s.alpha:g}"
    )
    if n >= s.min_judgements and low > floor:
        action, statistic = PROMOTE, promote_stat
        reason = f"{summary}: above {floor:.3f}, not {s.delta:g} worse than stable"
    elif n >= s.min_judgements and high < 0.5:
        action, statistic = ROLLBACK, rollback_stat
        reason = f"{summary}: below 0.5, worse than stable"
    else:
        statistic = max(promote_stat, rollback_stat)
        action = on_inconclusive if window_over else WAIT
        reason = f"inconclusive after the window: {summary}" if window_over else f"collecting: {summary}"
    return SequentialDecision(
        action,
        n,
        wins,
        rate,
        rate - 0.5,
        low - 0.5,
        high - 0.5,
        None if statistic == -math.inf else statistic,
        threshold,
        reason,
    )
