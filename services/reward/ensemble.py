"""Reward-model ensembles: several models score the same items, one rule combines them.

Ensembles counter reward over-optimization (Coste et al. 2023, arXiv 2310.02743): the
worst case (`min`) or an uncertainty penalty (`mean - k * std`) keeps a policy from
exploiting the errors of any one model. Members are hosted models referred to by name,
optionally pinned to a version; an ensemble is declared in the models file or per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.reward.backend import digest_version

AGGREGATIONS = ("mean", "min", "mean_minus_std")
MIN_MEMBERS, MAX_MEMBERS = 2, 16
PER_REQUEST_NAME = "ensemble"


@dataclass(frozen=True)
class MemberRef:
    """A hosted model at its latest version (`version` None) or pinned to one."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble: which members and how their scores combine."""

    name: str
    members: tuple[MemberRef, ...]
    aggregation: str = "mean"
    k: float = 1.0
    description: str | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {self.aggregation!r}")
        if not MIN_MEMBERS <= len(self.members) <= MAX_MEMBERS:
            raise ValueError(f"an ensemble needs {MIN_MEMBERS} to {MAX_MEMBERS} members, got {len(self.members)}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members must be distinct, got {[str(m) for m in self.members]}")
        if not (math.isfinite(self.k) and self.k >= 0):
            raise ValueError(f"k must be a finite number >= 0, got {self.k!r}")

    def describe(self) -> str:
        if self.description:
            return self.description
        rule = {"mean": "mean", "min": "minimum", "mean_minus_std": f"mean - {self.k:g} x std"}[self.aggregation]
        return f"Ensemble: {rule} of {', '.join(str(m) for m in self.members)}."


def aggregate(member_scores: Sequence[Sequence[float]], aggregation: str, k: float = 1.0) -> list[float]:
    """Combines one row of scores per member (same items, same order) into one score per item."""
    scores = np.asarray(member_scores, dtype=np.float64)
    if aggregation == "mean":
        combined = scores.mean(axis=0)
    elif aggregation == "min":
        combined = scores.min(axis=0)
    elif aggregation == "mean_minus_std":
        combined = scores.mean(axis=0) - k * scores.std(axis=0)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return combined.tolist()


def ensemble_version(members: Sequence[tuple[str, str]], aggregation: str, k: float) -> str:
    """Version of an ensemble: a hash of its rule and its members' names and versions."""
    canonical = ";".join([f"{aggregation}:{k!r}", *(f"{name}@{version}" for name, version in members)])
    return digest_version([canonical.encode()])
