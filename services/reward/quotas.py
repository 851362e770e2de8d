"""Per-tenant quotas: a rate limit on items and a cap on concurrent requests.

Many training jobs and product teams share one reward service; one job's burst must
not starve the others. Each tenant (see services.common.tenancy) gets a token bucket
refilled at `items_per_s` model evaluations per second, holding at most `burst_items`,
and at most `max_concurrent_requests` requests in flight. A request that would break
either limit is refused at once with `Overloaded` (RESOURCE_EXHAUSTED plus a retry
hint), never queued: waiting work is what the per-model batch queues are for, and
they are bounded too.

An item costs one evaluation per model it goes through: an ensemble of three charges
three per item, a Compare pair two per model. A request costing more than the whole
bucket is charged the bucket's capacity, so it can still pass when the bucket is full.

Limits come from RewardConfig (defaults for every tenant; 0 = unlimited) and,
per tenant, from the quotas file:

    [tenants.batch-jobs]
    items_per_s = 2000
    burst_items = 4000
    max_concurrent_requests = 64

    [tenants.notebooks]
    max_concurrent_requests = 2     # unset keys inherit the defaults
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.reward.overload import Overloaded

_EWMA_WEIGHT = 0.2
_DEFAULT_LATENCY_S = 0.05
_MAX_IDLE_STATES = 10_000


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits; 0 means unlimited."""

    items_per_s: float = 0.0
    burst_items: int = 0
    max_concurrent_requests: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.items_per_s) and self.items_per_s >= 0):
            raise ValueError(f"items_per_s must be a finite number >= 0, got {self.items_per_s!r}")
        for name in ("burst_items", "max_concurrent_requests"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def capacity(self) -> float:
        """Bucket size: burst_items, or one second of refill when unset."""
        return float(self.burst_items) if self.burst_items else max(self.items_per_s, 1.0)


class QuotasFileError(ValueError):
    """The quotas file is unreadable or declares something invalid."""


def load_overrides(path: str | Path, defaults: TenantLimits) -> dict[str, TenantLimits]:
    """Reads `[tenants.NAME]` tables; keys a table leaves out keep the defaults."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise QuotasFileError(f"quotas file {path}: {exc}") from exc
    return parse_overrides(document, defaults, source=str(path))


def parse_overrides(
    document: Mapping[str, Any], defaults: TenantLimits, source: str = "quotas file"
) -> dict[str, TenantLimits]:
    unknown = sorted(set(document) - {"tenants"})
    if unknown:
        raise QuotasFileError(f"{source}: unknown top-level keys {unknown}; declare [tenants.NAME] tables")
    tenants = document.get("tenants", {})
    if not isinstance(tenants, dict):
        raise QuotasFileError(f"{source}: tenants must be a table of [tenants.NAME] tables")
    allowed = {f.name: f.type for f in dataclasses.fields(TenantLimits)}
    overrides: dict[str, TenantLimits] = {}
    for tenant, table in tenants.items():
        where = f"{source}: tenants.{tenant}"
        if not isinstance(table, dict):
            raise QuotasFileError(f"{where}: expected a table")
        bad = sorted(set(table) - set(allowed))
        if bad:
            raise QuotasFileError(f"{where}: unknown keys {bad}; allowed: {sorted(allowed)}")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise QuotasFileError(f"{where}: {key} must be a number, got {value!r}")
            if key != "items_per_s" and not isinstance(value, int):
                raise QuotasFileError(f"{where}: {key} must be an integer, got {value!r}")
        try:
            overrides[tenant] = dataclasses.replace(defaults, **table)
        except ValueError as exc:
            raise QuotasFileError(f"{where}: {exc}") from exc
    return overrides


@dataclass
class _TenantState:
    level: float
    updated: float
    in_flight: int = 0
    latency_s: float = _DEFAULT_LATENCY_S


class TenantQuotas:
    """Admits or refuses each request of each tenant. Use from one thread (the event loop)."""

    def __init__(
        self,
        defaults: TenantLimits = TenantLimits(),
        overrides: Mapping[str, TenantLimits] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.defaults = defaults
        self.overrides = dict(overrides or {})
        self._clock = clock
        self._states: dict[str, _TenantState] = {}

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.overrides.get(tenant, self.defaults)

    @contextmanager
    def admit(self, tenant: str, items: int) -> Iterator[None]:
        """Holds one of the tenant's concurrency slots and charges `items` evaluations, or raises Overloaded."""
        limits = self.limits_for(tenant)
        state = self._state(tenant, limits)
        if limits.max_concurrent_requests and state.in_flight >= limits.max_concurrent_requests:
            raise Overloaded(
                f"tenant {tenant!r} has {state.in_flight} requests in flight, its limit is "
                f"max_concurrent_requests={limits.max_concurrent_requests}",
                state.latency_s * 1000,
            )
        if limits.items_per_s:
            self._refill(state, limits)
            cost = min(float(items), limits.capacity)
            if state.level < cost:
                raise Overloaded(
                    f"tenant {tenant!r} is over its rate limit of {limits.items_per_s:g} items/s "
                    f"(burst {limits.capacity:g}); this request needs {items} item evaluations",
                    (cost - state.level) / limits.items_per_s * 1000,
                )
            state.level -= cost
        state.in_flight += 1
        started = self._clock()
        try:
            yield
        finally:
            state.in_flight -= 1
            elapsed = self._clock() - started
            state.latency_s += _EWMA_WEIGHT * (elapsed - state.latency_s)

    def in_flight(self, tenant: str) -> int:
        state = self._states.get(tenant)
        return state.in_flight if state else 0

    def _state(self, tenant: str, limits: TenantLimits) -> _TenantState:
        state = self._states.get(tenant)
        if state is None:
            if len(self._states) >= _MAX_IDLE_STATES:
                self._forget_idle()
            state = self._states[tenant] = _TenantState(limits.capacity, self._clock())
        return state

    def _refill(self, state: _TenantState, limits: TenantLimits) -> None:
        now = self._clock()
        state.level = min(limits.capacity, state.level + (now - state.updated) * limits.items_per_s)
        state.updated = now

    def _forget_idle(self) -> None:
        """Bounds memory when many tenant names pass by: idle tenants with full buckets lose nothing."""
        for tenant in list(self._states):
            state, limits = self._states[tenant], self.limits_for(tenant)
            if limits.items_per_s:
                self._refill(state, limits)
            if state.in_flight == 0 and state.level >= limits.capacity:
                del self._states[tenant]
