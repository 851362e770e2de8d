"""Tenant quotas with a fake clock: token-bucket rate limits, concurrency caps, retry hints, overrides."""

from __future__ import annotations

import pytest

from services.reward.overload import Overloaded
from services.reward.quotas import QuotasFileError, TenantLimits, TenantQuotas, load_overrides, parse_overrides


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_by_default():
    quotas = TenantQuotas()
    for _ in range(1000):
        with quotas.admit("anyone", 10_000):
            pass


def test_rate_limit_refuses_over_budget_with_a_retry_hint_and_refills():
    clock = Clock()
    quotas = TenantQuotas(TenantLimits(items_per_s=10, burst_items=20), clock=clock)
    with quotas.admit("a", 15):
        pass
    with pytest.raises(Overloaded, match="over its rate limit of 10 items/s") as error:
        with quotas.admit("a", 10):
            pass
    assert error.value.retry_after_ms == 500  # 5 left, 10 needed, 10/s
    with quotas.admit("b", 20):  # another tenant has its own bucket
        pass
    clock.now += 0.5
    with quotas.admit("a", 10):
        pass


def test_a_request_larger_than_the_bucket_passes_when_the_bucket_is_full():
    clock = Clock()
    quotas = TenantQuotas(TenantLimits(items_per_s=10, burst_items=20), clock=clock)
    with quotas.admit("a", 500):
        pass
    with pytest.raises(Overloaded):
        with quotas.admit("a", 1):
            pass
    clock.now += 2.0
    with quotas.admit("a", 500):
        pass


def test_concurrency_cap_counts_requests_in_flight():
    clock = Clock()
    quotas = TenantQuotas(TenantLimits(max_concurrent_requests=2), clock=clock)
    with quotas.admit("a", 1), quotas.admit("a", 1):
        with pytest.raises(Overloaded, match="2 requests in flight.*max_concurrent_requests=2"):
            with quotas.admit("a", 1):
                pass
        with quotas.admit("b", 1):
            assert quotas.in_flight("a") == 2
    assert quotas.in_flight("a") == 0
    with quotas.admit("a", 1):
        pass


def test_a_failing_request_releases_its_slot():
    quotas = TenantQuotas(TenantLimits(max_concurrent_requests=1))
    with pytest.raises(RuntimeError):
        with quotas.admit("a", 1):
            raise RuntimeError("scoring failed")
    with quotas.admit("a", 1):
        pass


def test_concurrency_retry_hint_follows_recent_latency():
    clock = Clock()
    quotas = TenantQuotas(TenantLimits(max_concurrent_requests=1), clock=clock)
    for _ in range(30):
        with quotas.admit("a", 1):
            clock.now += 0.4
    with quotas.admit("a", 1):
        with pytest.raises(Overloaded) as error:
            with quotas.admit("a", 1):
                pass
    assert 350 <= error.value.retry_after_ms <= 400


def test_overrides_inherit_unset_keys_from_the_defaults(tmp_path):
    defaults = TenantLimits(items_per_s=100, burst_items=200, max_concurrent_requests=8)
    path = tmp_path / "quotas.toml"
    path.write_text('[tenants.batch]\nitems_per_s = 1000\n\n[tenants."notebook-1"]\nmax_concurrent_requests = 1\n')
    overrides = load_overrides(path, defaults)
    assert overrides == {
        "batch": TenantLimits(1000, 200, 8),
        "notebook-1": TenantLimits(100, 200, 1),
    }
    quotas = TenantQuotas(defaults, overrides)
    assert quotas.limits_for("batch").items_per_s == 1000
    assert quotas.limits_for("other") == defaults


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tenant": {}}, "unknown top-level keys \\['tenant'\\]"),
        ({"tenants": {"a": {"rate": 1}}}, "tenants.a: unknown keys \\['rate'\\]"),
        ({"tenants": {"a": {"items_per_s": "fast"}}}, "items_per_s must be a number"),
        ({"tenants": {"a": {"burst_items": 1.5}}}, "burst_items must be an integer"),
        ({"tenants": {"a": {"max_concurrent_requests": -1}}}, "max_concurrent_requests must be >= 0"),
        ({"tenants": {"a": 3}}, "tenants.a: expected a table"),
    ],
)
def test_invalid_overrides(document, message):
    with pytest.raises(QuotasFileError, match=message):
        parse_overrides(document, TenantLimits())
