"""Load shapes: closed loop (fixed concurrency) and open loop (gamma/Poisson arrivals).

A closed loop keeps N requests in flight, sending the next as one returns: it
measures the service at a fixed concurrency. An open loop sends at a rate
regardless of completions (optionally capped by a semaphore, as vLLM's
`--max-concurrency`): past the service's capacity, latency climbs without bound,
which is the knee a sweep looks for. Both stop sending at the duration or the
request count, whichever comes first, then wait for what is in flight (each
request carries its own deadline), so a run always ends by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from tqdm import tqdm

from services.common.arrivals import arrival_gaps
from services.loadtest.summary import RequestResult

Send = Callable[[], Awaitable[RequestResult]]


@dataclass(frozen=True)
class LoadShape:
    """One load level: closed loop at `concurrency`, or open loop when `request_rate` > 0."""

    concurrency: int = 1
    request_rate: float = 0.0
    burstiness: float = 1.0
    max_concurrency: int = 0

    @property
    def open_loop(self) -> bool:
        return self.request_rate > 0

    @property
    def label(self) -> str:
        if not self.open_loop:
            return f"concurrency={self.concurrency}"
        cap = f" max_concurrency={self.max_concurrency}" if self.max_concurrency else ""
        return f"rate={self.request_rate:g}/s burstiness={self.burstiness:g}{cap}"

    def as_dict(self) -> dict:
        if not self.open_loop:
            return {"mode": "closed", "concurrency": self.concurrency}
        return {"mode": "open", **{k: v for k, v in asdict(self).items() if k != "concurrency"}}


@dataclass(frozen=True)
class Bounds:
    """When to stop sending: after `duration_s`, or `num_requests` (0 = no count limit)."""

    duration_s: float
    num_requests: int = 0


@dataclass(frozen=True)
class RunResult:
    results: list[RequestResult]
    duration_s: float


class _Progress:
    """A tqdm bar over requests when a count bounds the run, else over seconds."""

    def __init__(self, bounds: Bounds, enabled: bool, desc: str) -> None:
        self.by_count = bounds.num_requests > 0
        total = bounds.num_requests if self.by_count else round(bounds.duration_s, 1)
        self.bar = tqdm(total=total, unit="req" if self.by_count else "s", desc=desc, disable=not enabled, leave=True)
        self.ok = self.failed = 0

    def completed(self, result: RequestResult) -> None:
        if result.success:
            self.ok += 1
        else:
            self.failed += 1
        if self.by_count:
            self.bar.update(1)
        self.bar.set_postfix({"ok": self.ok, "failed": self.failed}, refresh=False)

    def tick(self, elapsed_s: float) -> None:
        if not self.by_count:
            self.bar.n = min(round(elapsed_s, 1), self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


async def run_load(
    send: Send, shape: LoadShape, bounds: Bounds, seed: int = 0, progress: bool = True, desc: str = ""
) -> RunResult:
    """Sends requests in `shape` until `bounds`, waits for the stragglers, returns every result."""
    results: list[RequestResult] = []
    bar = _Progress(bounds, progress, desc or shape.label)
    start = time.perf_counter()
    deadline = start + bounds.duration_s
    issued = 0

    def may_send() -> bool:
        return (not bounds.num_requests or issued < bounds.num_requests) and time.perf_counter() < deadline

    async def one() -> None:
        result = await send()
        results.append(result)
        bar.completed(result)

    async def closed_loop() -> None:
        async def worker() -> None:
            nonlocal issued
            while may_send():
                issued += 1
                await one()

        await asyncio.gather(*(worker() for _ in range(shape.concurrency)))

    async def open_loop() -> None:
        nonlocal issued
        slots = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None

        async def limited() -> None:
            if slots is None:
                await one()
                return
            async with slots:
                await one()

        tasks = []
        next_at = start
        for gap in arrival_gaps(shape.request_rate, shape.burstiness, seed):
            next_at += gap
            if next_at >= deadline or not may_send():
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if not may_send():  # the sleep overshot the deadline
                break
            issued += 1
            tasks.append(asyncio.create_task(limited()))
        await asyncio.gather(*tasks)

    async def ticker() -> None:
        while True:
            bar.tick(time.perf_counter() - start)
            await asyncio.sleep(0.5)

    ticking = asyncio.create_task(ticker())
    try:
        await (open_loop() if shape.open_loop else closed_loop())
    finally:
        ticking.cancel()
        bar.tick(time.perf_counter() - start)
        bar.close()
    return RunResult(results, time.perf_counter() - start)


async def warm_up(send: Send, count: int, parallel: int) -> list[RequestResult]:
    """Sends `count` requests, `parallel` at a time, whose results are not measured."""
    results: list[RequestResult] = []
    for first in range(0, count, max(1, parallel)):
        batch = min(parallel, count - first)
        results.extend(await asyncio.gather(*(send() for _ in range(batch))))
    return results
