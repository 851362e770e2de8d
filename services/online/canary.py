"""Safe rollout: a new policy version serves the canary replica first, and stays only if users like it.

`deploy` pushes the candidate to the canary under a fresh version number, then reads
the store's denoised ratings until both the candidate and the stable version have
`min_ratings` rated samples (or `window_s` passes), and decides with `judge`: if
the candidate's mean score is below the stable version's by more than `margin`, the
canary is rolled back (its Rollback RPC restores the stable version in place);
otherwise the same weights are pushed to the stable replica under the same number.
Without enough ratings in the window the outcome is `on_inconclusive` (default
rollback: an unproven version does not reach everyone). The comparison is paired by
rater (`VersionQuality.paired`): only raters who rated both versions count, so the
canary's users are compared with themselves, not with the stable replica's users.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from services.online.clients import PolicyReplica
from services.online.quality import VersionQuality, VersionStats
from services.online.versions import VersionAllocator

log = logging.getLogger(__name__)

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"


@dataclass(frozen=True)
class CanarySettings:
    min_ratings: int = 20
    margin: float = 0.05
    window_s: float = 300.0
    poll_s: float = 2.0
    on_inconclusive: str = ROLLBACK

    def __post_init__(self) -> None:
        if self.on_inconclusive not in (PROMOTE, ROLLBACK):
            raise ValueError(f"on_inconclusive must be {PROMOTE!r} or {ROLLBACK!r}, got {self.on_inconclusive!r}")
        if self.min_ratings < 1 or self.margin < 0 or self.window_s <= 0 or self.poll_s <= 0:
            raise ValueError("min_ratings must be >= 1, margin >= 0, window_s and poll_s > 0")


@dataclass(frozen=True)
class Verdict:
    action: str  # promote, rollback or wait
    reason: str


def judge(candidate: VersionStats, baseline: VersionStats, settings: CanarySettings, window_over: bool) -> Verdict:
    """The rollout decision from the two versions' rated samples (pure, so it is unit-tested)."""
    enough = candidate.samples >= settings.min_ratings and baseline.samples >= settings.min_ratings
    if not enough:
        if not window_over:
            return Verdict(WAIT, "collecting ratings")
        return Verdict(settings.on_inconclusive,
                       f"inconclusive: {candidate.samples} rated samples of the candidate and {baseline.samples} of "
                       f"the stable version by raters who judged both, after the window (need {settings.min_ratings} each)")
    gap = candidate.mean - baseline.mean
    if gap < -settings.margin:
        return Verdict(ROLLBACK, f"candidate scores {candidate.mean:.3f} vs stable {baseline.mean:.3f} "
                                 f"({gap:+.3f}, below the margin of {settings.margin:g}; {candidate.raters} raters)")
    return Verdict(PROMOTE, f"candidate scores {candidate.mean:.3f} vs stable {baseline.mean:.3f} "
                            f"({gap:+.3f}; {candidate.raters} raters)")


@dataclass(frozen=True)
class Decision:
    candidate_version: int
    baseline_version: int
    action: str
    reason: str
    candidate: dict
    baseline: dict
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


class Stopped(Exception):
    """The loop was asked to stop while a candidate was being judged."""


class SafeRollout:
    def __init__(self, stable: PolicyReplica, canary: PolicyReplica, quality: VersionQuality, reader,
                 versions: VersionAllocator, settings: CanarySettings) -> None:
        self.stable, self.canary, self.quality, self.reader = stable, canary, quality, reader
        self.versions, self.settings = versions, settings

    def deploy(self, tensors: Sequence[tuple[str, torch.Tensor]], note: str, baseline: int,
               stop: threading.Event | None = None) -> Decision:
        """Canary, judge, then roll back or promote. `baseline` is the version the stable replica serves."""
        started = time.monotonic()
        candidate = self.versions.allocate()
        self.canary.push(tensors, candidate, note)
        verdict = self.evaluate(candidate, baseline, stop)
        if verdict.action == ROLLBACK:
            self.canary.rollback(baseline, f"canary check: {verdict.reason}")
        else:
            self.stable.push(tensors, candidate, note)
        paired = self.quality.paired(candidate, baseline)
        decision = Decision(candidate, baseline, verdict.action, verdict.reason, paired[0].as_dict(), paired[1].as_dict(),
                            round(time.monotonic() - started, 2))
        log.info("canary %s version %d (stable %d): %s", decision.action, candidate, baseline, decision.reason)
        return decision

    def evaluate(self, candidate: int, baseline: int, stop: threading.Event | None = None) -> Verdict:
        deadline = time.monotonic() + self.settings.window_s
        while True:
            self.quality.refresh(self.reader)
            verdict = judge(*self.quality.paired(candidate, baseline), self.settings, window_over=time.monotonic() >= deadline)
            if verdict.action != WAIT:
                return verdict
            if stop is not None and stop.wait(self.settings.poll_s):
                raise Stopped(f"stopped while judging version {candidate}")
            if stop is None:
                time.sleep(self.settings.poll_s)
