"""Dynamic batching per model: items of concurrent callers share one forward pass.

Callers put their items on the model's bounded queue and await one future per item.
A single worker task takes items in arrival order until the batch is full, waiting at
most `max_wait_ms` after the oldest waiting item arrived for more to come, runs the
model's synchronous `score` on a dedicated thread (the event loop keeps serving) and
resolves the futures. While a batch runs, new items queue up, so under load batches
fill by themselves and the wait rarely applies. A request's items may be split
across consecutive batches; order within a request is preserved.

A batch is full at `max_batch_size` items or, with a token budget, when the next item
would make `rows_per_item * items * longest item` (the padded positions the model
computes) exceed `max_batch_tokens`: one long text then no longer makes a big batch
of short ones pay for its padding. An item longer than the whole budget runs alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import Unavailable
from services.reward.overload import Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
ScoreFn = Callable[[list[T]], list[float]]
_EWMA_WEIGHT = 0.2


@dataclass(frozen=True)
class BatcherConfig:
    """How one model's batches form; see RewardConfig for the meaning of each field."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue_items: int = 4096
    max_batch_tokens: int = 0


@dataclass(frozen=True)
class BatchReport:
    """One scored batch, for metrics."""

    size: int
    seconds: float
    padded_tokens: int


BatchHook = Callable[[BatchReport], None]


@dataclass(frozen=True)
class BatcherStats:
    queued_items: int
    batches: int
    items: int
    failed_batches: int


@dataclass
class _Pending(Generic[T]):
    item: T
    tokens: int
    future: asyncio.Future[float]
    enqueued: float


class DynamicBatcher(Generic[T]):
    """Batches `score_fn` calls for one model. Create and use inside a running event loop."""

    def __init__(
        self,
        name: str,
        score_fn: ScoreFn,
        config: BatcherConfig = BatcherConfig(),
        on_batch: BatchHook | None = None,
        rows_per_item: int = 1,
    ) -> None:
        self.name, self.config, self.rows_per_item = name, config, rows_per_item
        self._score_fn, self._on_batch = score_fn, on_batch
        self._batch_seconds = 0.0  # moving average, for retry hints
        self._pending: deque[_Pending[T]] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
        self._batches = self._items = self._failed = 0
        self._closed = False
        self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{name}")

    @property
    def queued_items(self) -> int:
        return len(self._pending)

    def stats(self) -> BatcherStats:
        return BatcherStats(len(self._pending), self._batches, self._items, self._failed)

    async def submit(self, items: Sequence[T], tokens: Sequence[int] | None = None) -> list[float]:
        """Scores `items` (in order) as part of whatever batches they land in.

        `tokens` are the items' lengths for the token budget (None: no budget applies).
        """
        if self._closed:
            raise Unavailable(f"model {self.name!r} is shutting down")
        waiting, limit = len(self._pending), self.config.max_queue_items
        if waiting + len(items) > limit:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {waiting} items queued + {len(items)} requested exceeds "
                f"max_queue_items={limit}; send fewer items or retry later",
                self._drain_estimate_s() * 1000,
            )
        lengths = [0] * len(items) if tokens is None else list(tokens)
        if len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} token lengths for {len(items)} items")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(
            _Pending(item, length, future, now) for item, length, future in zip(items, lengths, futures, strict=True)
        )
        self._arrived.set()
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            # Cancelled caller or failed batch: the rest of this request need not be scored;
            # the worker skips futures that are already done.
            for future in futures:
                future.cancel()
            raise

    async def close(self) -> None:
        """Stops the worker and fails whatever is still queued."""
        self._closed = True
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)  # a running batch may still be finishing

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._score(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batcher worker error model=%s", self.name)

    def _fits(self, count: int, longest: int, tokens: int) -> bool:
        """Whether an item of `tokens` may join a batch of `count` items whose longest has `longest`."""
        if count >= self.config.max_batch_size:
            return False
        budget = self.config.max_batch_tokens
        return not budget or count == 0 or (count + 1) * self.rows_per_item * max(longest, tokens) <= budget

    def _queue_fills_a_batch(self) -> bool:
        count = longest = 0
        for pending in self._pending:
            if pending.future.done():
                continue
            if not self._fits(count, longest, pending.tokens):
                return True
            count, longest = count + 1, max(longest, pending.tokens)
        return False

    async def _next_batch(self) -> list[_Pending[T]]:
        """Waits for a first item, then for more until the batch is full or the wait is over."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].enqueued + self.config.max_wait_ms / 1000.0
        while not self._queue_fills_a_batch():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Pending[T]] = []
        longest = 0
        while self._pending:
            pending = self._pending[0]
            if pending.future.done():  # done = its caller was cancelled
                self._pending.popleft()
                continue
            if not self._fits(len(batch), longest, pending.tokens):
                break
            batch.append(self._pending.popleft())
            longest = max(longest, pending.tokens)
        return batch

    def _drain_estimate_s(self) -> float:
        """Rough time until the current queue has been scored: batches ahead x recent batch time."""
        batches_ahead = len(self._pending) / self.config.max_batch_size + 1
        return batches_ahead * (self._batch_seconds or 0.05)

    async def _score(self, batch: list[_Pending[T]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._executor, self._score_fn, [p.item for p in batch])
            if len(scores) != len(batch):
                raise RuntimeError(f"model {self.name!r} returned {len(scores)} scores for {len(batch)} items")
        except asyncio.CancelledError:
            for pending in batch:  # closing mid-batch: nobody may be left waiting forever
                if not pending.future.done():
                    pending.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - delivered to every caller in the batch
            self._failed += 1
            log.exception("batch failed model=%s size=%d", self.name, len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        self._batches += 1
        self._items += len(batch)
        self._batch_seconds += _EWMA_WEIGHT * (seconds - self._batch_seconds)
        for pending, score in zip(batch, scores, strict=True):
            if not pending.future.done():
                pending.future.set_result(float(score))
        padded = len(batch) * self.rows_per_item * max(p.tokens for p in batch)
        if self._on_batch is not None:
            self._on_batch(BatchReport(len(batch), seconds, padded))
        log.debug("batch model=%s size=%d padded_tokens=%d seconds=%.4f", self.name, len(batch), padded, seconds)
