"""Load shapes and bounds, driven by a fake service call (no network): counts, concurrency, stopping."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.arrivals import arrival_times
from services.loadtest.runner import Bounds, LoadShape, run_load, warm_up
from services.loadtest.summary import RequestResult


class FakeService:
    """Answers after `latency_s`; records how many calls overlapped and when each was sent."""

    def __init__(self, latency_s: float = 0.01, fail_every: int = 0) -> None:
        self.latency_s, self.fail_every = latency_s, fail_every
        self.in_flight = self.peak = self.calls = 0
        self.sent_at: list[float] = []

    async def send(self) -> RequestResult:
        self.calls += 1
        number = self.calls
        self.sent_at.append(time.perf_counter())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        started = time.perf_counter()
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        if self.fail_every and number % self.fail_every == 0:
            return RequestResult(started=started, success=False, error="RESOURCE_EXHAUSTED")
        return RequestResult(started=started, success=True, e2el=time.perf_counter() - started)


def _run(service: FakeService, shape: LoadShape, bounds: Bounds):
    async def go():
        start = time.perf_counter()
        run = await asyncio.wait_for(run_load(service.send, shape, bounds, progress=False), timeout=20)
        return run, start

    return asyncio.run(go())


def test_closed_loop_keeps_exactly_the_concurrency_in_flight() -> None:
    service = FakeService(latency_s=0.02)
    run, _ = _run(service, LoadShape(concurrency=3), Bounds(duration_s=30, num_requests=12))
    assert len(run.results) == service.calls == 12
    assert service.peak == 3
    assert run.duration_s < 30


def test_duration_bounds_a_run_without_a_count() -> None:
    service = FakeService(latency_s=0.02)
    run, start = _run(service, LoadShape(concurrency=2), Bounds(duration_s=0.3))
    assert len(run.results) == service.calls > 2
    assert max(service.sent_at) - start < 0.3  # nothing is sent after the duration


def test_open_loop_counts_and_caps_concurrency() -> None:
    service = FakeService(latency_s=0.05)
    shape = LoadShape(request_rate=400.0, burstiness=1.0, max_concurrency=2)
    run, _ = _run(service, shape, Bounds(duration_s=30, num_requests=15))
    assert len(run.results) == 15
    assert service.peak == 2


def test_open_loop_does_not_wait_for_completions() -> None:
    """Without a cap, arrivals keep coming while earlier requests are still running."""
    service = FakeService(latency_s=0.3)
    run, _ = _run(service, LoadShape(request_rate=100.0), Bounds(duration_s=0.25))
    assert service.peak > 5
    # The seeded schedule fixes how many arrivals fall inside the duration; none after it is sent
    # (a busy event loop can only send fewer).
    scheduled = sum(t < 0.25 for t in arrival_times(100.0, 1.0, 0, 200))
    assert 5 < service.calls <= scheduled
    assert len(run.results) == service.calls


def test_failures_are_results_not_exceptions() -> None:
    service = FakeService(fail_every=3)
    run, _ = _run(service, LoadShape(concurrency=2), Bounds(duration_s=30, num_requests=9))
    assert sum(not r.success for r in run.results) == 3


def test_warm_up_sends_the_count_in_parallel_batches() -> None:
    service = FakeService(latency_s=0.01)
    results = asyncio.run(warm_up(service.send, count=5, parallel=2))
    assert len(results) == 5 and service.peak == 2


def test_shape_labels_and_dicts() -> None:
    assert LoadShape(concurrency=4).as_dict() == {"mode": "closed", "concurrency": 4}
    open_shape = LoadShape(request_rate=2.5, burstiness=0.5, max_concurrency=8)
    assert open_shape.open_loop and open_shape.label == "rate=2.5/s burstiness=0.5 max_concurrency=8"
    assert open_shape.as_dict() == {"mode": "open", "request_rate": 2.5, "burstiness": 0.5, "max_concurrency": 8}
    with pytest.raises(AttributeError):
        open_shape.concurrency = 3  # frozen
