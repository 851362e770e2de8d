"""Safe rollout: a new policy version serves the canary replica first, and stays only if users prefer it.

`deploy` pushes the candidate to the canary under a fresh version number, then reads
the paired judgements users make between the two versions (a canary user shown one
completion of each picks one; `judgements.PairedJudgements`) and decides with the
sequential test of `sequential.py`: promote when the candidate's win rate against
stable is surely above 0.5 - delta, roll back when it is surely below 0.5, keep
collecting otherwise. The test is a confidence sequence, valid however often it is
looked at, so a delta-worse candidate is promoted with probability at most alpha.
At the end of the window (`max_judgements` or `window_s`) the outcome is
`on_inconclusive` (default rollback: an unproven version does not reach everyone).
A rollback uses the canary's Rollback RPC (the stable version is restored in place);
a promotion pushes the same weights to the stable replica under the same number.
The rated scores of both versions (`VersionQuality.paired`) are recorded with each
decision for the record; they do not decide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from services.clients.policy import PolicyReplica
from services.common.config import option
from services.online.hacking_guard import RewardHackingGuard
from services.online.judgements import PairedJudgements
from services.online.quality import VersionQuality
from services.online.sequential import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    SequentialDecision,
    SequentialSettings,
    decide,
)
from services.online.versions import VersionAllocator

__all__ = ["PROMOTE", "ROLLBACK", "WAIT", "CanarySettings", "Decision", "SafeRollout", "Stopped", "judge"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanarySettings(SequentialSettings):
    """The canary gate: the sequential test's settings plus how long to wait and what an inconclusive test means."""

    window_s: float = option(300.0, "Longest wait for a decision on one candidate, in seconds.")
    poll_s: float = option(2.0, "How often the judgements are read while a candidate is on the canary.")
    on_inconclusive: str = option(ROLLBACK, "Outcome when the window ends without a decision: rollback or promote.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.on_inconclusive not in (PROMOTE, ROLLBACK):
            raise ValueError(f"on_inconclusive must be {PROMOTE!r} or {ROLLBACK!r}, got {self.on_inconclusive!r}")
        if self.window_s <= 0 or self.poll_s <= 0:
            raise ValueError("window_s and poll_s must be > 0")


def judge(wins: int, n: int, settings: CanarySettings, window_over: bool) -> SequentialDecision:
    """The rollout decision from the candidate's `wins` in `n` paired judgements against stable."""
    return decide(wins, n, settings, window_over, settings.on_inconclusive)


@dataclass(frozen=True)
class Decision:
    candidate_version: int
    baseline_version: int
    action: str
    reason: str
    n: int  # paired judgements the decision read
    effect: float | None  # candidate's win rate against stable - 0.5
    ci_low: float | None  # time-uniform (1 - alpha) bounds on the effect
    ci_high: float | None
    statistic: float | None  # log mixture likelihood ratio (rejects at >= threshold)
    threshold: float
    test: dict  # the whole SequentialDecision
    guard: dict | None  # the reward-hacking guard's verdict (None without a guard)
    candidate: dict  # rated stats of the raters who rated both versions (for the record)
    baseline: dict
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


class Stopped(Exception):
    """The loop was asked to stop while a candidate was being judged."""


class SafeRollout:
    def __init__(
        self,
        stable: PolicyReplica,
        canary: PolicyReplica,
        quality: VersionQuality,
        reader,
        versions: VersionAllocator,
        settings: CanarySettings,
        judgements: PairedJudgements | None = None,
    ) -> None:
        self.stable, self.canary, self.quality, self.reader = stable, canary, quality, reader
        self.versions, self.settings = versions, settings
        self.judgements = judgements if judgements is not None else PairedJudgements()
        self.guard: RewardHackingGuard | None = None  # set by the loop; checks every candidate before promotion

    @property
    def halted(self) -> str:
        """Why RL must stop (the reward-hacking guard tripped); empty otherwise."""
        return self.guard.halted if self.guard is not None else ""

    def deploy(
        self, tensors: Sequence[tuple[str, torch.Tensor]], note: str, baseline: int, stop: threading.Event | None = None
    ) -> Decision:
        """Canary, judge, then roll back or promote. `baseline` is the version the stable replica serves."""
        started = time.monotonic()
        candidate = self.versions.allocate()
        self.canary.push(tensors, candidate, note)
        verdict = self.evaluate(candidate, baseline, stop)
        action, reason, guarded = verdict.action, verdict.reason, None
        if self.guard is not None and self.guard.settings.enabled:
            self.judgements.refresh_gold(self.reader)
            checked = self.guard.review(candidate, baseline, *self.judgements.gold_tally(candidate, baseline))
            guarded = asdict(checked)
            if checked.tripped:
                action, reason = ROLLBACK, f"reward-hacking guard: {checked.reason} (canary test: {verdict.reason})"
        if action == ROLLBACK:
            self.canary.rollback(baseline, f"canary check: {reason}")
        else:
            self.stable.push(tensors, candidate, note)
        self.quality.refresh(self.reader)
        rated = self.quality.paired(candidate, baseline)
        decision = Decision(
            candidate,
            baseline,
            action,
            reason,
            verdict.n,
            verdict.effect,
            verdict.ci_low,
            verdict.ci_high,
            verdict.statistic,
            verdict.threshold,
            verdict.as_dict(),
            guarded,
            rated[0].as_dict(),
            rated[1].as_dict(),
            round(time.monotonic() - started, 2),
        )
        log.info(
            "canary %s version %d (stable %d): n=%d effect=%s interval=[%s, %s] statistic=%s: %s",
            decision.action,
            candidate,
            baseline,
            decision.n,
            _fmt(decision.effect),
            _fmt(decision.ci_low),
            _fmt(decision.ci_high),
            _fmt(decision.statistic),
            decision.reason,
        )
        return decision

    def evaluate(self, candidate: int, baseline: int, stop: threading.Event | None = None) -> SequentialDecision:
        deadline = time.monotonic() + self.settings.window_s
        while True:
            self.judgements.refresh(self.reader)
            wins, n = self.judgements.tally(candidate, baseline)
            verdict = judge(wins, n, self.settings, window_over=time.monotonic() >= deadline)
            if verdict.action != WAIT:
                return verdict
            if stop is not None and stop.wait(self.settings.poll_s):
                raise Stopped(f"stopped while judging version {candidate}")
            if stop is None:
                time.sleep(self.settings.poll_s)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"
