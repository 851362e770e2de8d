"""What a Score or Compare request asks for, and getting it from the hosted models.

A request names one model (optionally pinned to a version), a configured ensemble, or
an ensemble of its own. `Scorer.plan` turns that into the member references to lease;
`Scorer.score` leases them all at once (so a publish in the middle cannot mix
versions), sends the items through every member's batcher concurrently, and combines
the results. Plain Python, no gRPC: the servicer only converts messages.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.common.errors import InvalidArgument
from services.reward.backend import RewardItem
from services.reward.ensemble import EnsembleSpec, MemberRef, aggregate, ensemble_version
from services.reward.hosting import ModelHost

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """The models one request uses; `ensemble` is None for a single model."""

    refs: tuple[MemberRef, ...]
    ensemble: EnsembleSpec | None = None

    @property
    def evaluations_per_item(self) -> int:
        return len(self.refs)


@dataclass(frozen=True)
class MemberResult:
    model: str
    version: str
    scores: list[float]
    whitened: list[float] | None


@dataclass(frozen=True)
class ScoreResult:
    scores: list[float]
    model: str
    version: str
    members: tuple[MemberResult, ...]
    whitened: list[float] | None


class Scorer:
    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def plan(self, model: str, version: str | None = None, ensemble: EnsembleSpec | None = None) -> Plan:
        """Validates what the request names; NotFound for names that are not hosted."""
        host = self.host
        if ensemble is not None:
            if model:
                raise InvalidArgument("set either model or ensemble, not both")
            if version is not None:
                raise InvalidArgument("model_version pins a single model; pin ensemble members in ensemble.members")
            self._require_models(ensemble.members)
            return Plan(ensemble.members, ensemble)
        if not model:
            raise InvalidArgument("model is empty: name a reward model or ensemble (see ListModels), or send ensemble")
        if model in host.ensembles:
            if version is not None:
                raise InvalidArgument(f"{model!r} is an ensemble; model_version pins single models only")
            configured = host.ensembles[model]
            return Plan(configured.members, configured)
        ref = MemberRef(model, version)
        self._require_models([ref])
        return Plan((ref,))

    async def score(self, plan: Plan, items: Sequence[RewardItem], whiten: bool = False) -> ScoreResult:
        with self.host.lease(plan.refs) as hosted:
            member_scores = await _gather_or_cancel([h.score(items) for h in hosted])
            member_whitened = None
            if whiten:
                member_whitened = [h.stats.whiten(s) for h, s in zip(hosted, member_scores, strict=True)]
            ensemble = plan.ensemble
            if ensemble is None:
                only = hosted[0]
                whitened_one = member_whitened[0] if member_whitened else None
                return ScoreResult(member_scores[0], only.name, only.version, (), whitened_one)
            scores = aggregate(member_scores, ensemble.aggregation, ensemble.k)
            whitened = aggregate(member_whitened, ensemble.aggregation, ensemble.k) if member_whitened else None
            members = tuple(
                MemberResult(h.name, h.version, s, member_whitened[i] if member_whitened else None)
                for i, (h, s) in enumerate(zip(hosted, member_scores, strict=True))
            )
            version = ensemble_version([(h.name, h.version) for h in hosted], ensemble.aggregation, ensemble.k)
            return ScoreResult(scores, ensemble.name, version, members, whitened)

    async def compare(
        self, plan: Plan, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], references: Sequence[str | None]
    ) -> tuple[list[float], list[float], list[float], ScoreResult]:
        """P(A preferred to B) per pair, from one scoring pass over all 2n completions (so they batch together)."""
        items = [RewardItem(p, c, r) for p, c, r in zip(prompts, a, references, strict=True)]
        items += [RewardItem(p, c, r) for p, c, r in zip(prompts, b, references, strict=True)]
        result = await self.score(plan, items)
        n = len(prompts)
        scores_a, scores_b = result.scores[:n], result.scores[n:]
        probabilities = [sigmoid(sa - sb) for sa, sb in zip(scores_a, scores_b, strict=True)]
        return probabilities, scores_a, scores_b, result

    def _require_models(self, refs: Sequence[MemberRef]) -> None:
        for ref in refs:
            self.host.resolve(ref.name, ref.version)


def sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


async def _gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Like gather, but when one fails the others are cancelled and awaited, so none outlives its lease."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
