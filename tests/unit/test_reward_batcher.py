"""Dynamic batcher logic with a fake scoring function (no model, no gRPC)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ResourceExhausted, Unavailable
from services.reward.batcher import BatcherConfig, DynamicBatcher


class FakeModel:
    """Scores item x as x * 10 and records each batch; can be held mid-batch."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def score(self, items: list[int]) -> list[float]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.release.wait(10), "test never released the batch"
        return [x * 10.0 for x in items]


async def _wait_entered(model: FakeModel) -> None:
    assert await asyncio.to_thread(model.entered.wait, 10)


def test_concurrent_callers_share_one_batch():
    async def scenario():
        model, sizes = FakeModel(), []
        batcher = DynamicBatcher(
            "m", model.score, BatcherConfig(max_batch_size=32, max_wait_ms=50), on_batch=lambda n, s: sizes.append(n)
        )
        requests = [[10 * c + i for i in range(2)] for c in range(5)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return model, sizes, requests, results

    model, sizes, requests, results = asyncio.run(scenario())
    assert results == [[x * 10.0 for x in r] for r in requests]
    assert len(model.batches) == 1 and sorted(model.batches[0]) == sorted(x for r in requests for x in r)
    assert sizes == [10]


def test_max_batch_size_splits_a_request_and_keeps_order():
    async def scenario():
        model = FakeModel()
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=4, max_wait_ms=0))
        result = await batcher.submit(list(range(10)))
        stats = batcher.stats()
        await batcher.close()
        return model, result, stats

    model, result, stats = asyncio.run(scenario())
    assert result == [x * 10.0 for x in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]
    assert (stats.batches, stats.items, stats.queued_items) == (3, 10, 0)


def test_items_arriving_during_a_batch_form_the_next_one():
    async def scenario():
        model = FakeModel(hold=True)
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=8, max_wait_ms=0))
        first = asyncio.ensure_future(batcher.submit([0]))
        await _wait_entered(model)
        later = [asyncio.ensure_future(batcher.submit([i])) for i in range(1, 6)]
        await asyncio.sleep(0)  # let the submits enqueue
        model.release.set()
        results = await asyncio.gather(first, *later)
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert results == [[i * 10.0] for i in range(6)]
    assert model.batches == [[0], [1, 2, 3, 4, 5]]


def test_full_queue_raises_resource_exhausted():
    async def scenario():
        model = FakeModel(hold=True)
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=2, max_wait_ms=0, max_queue_items=4))
        running = asyncio.ensure_future(batcher.submit([1, 2]))
        await _wait_entered(model)  # the worker took both items off the queue
        queued = asyncio.ensure_future(batcher.submit([3, 4, 5, 6]))
        await asyncio.sleep(0)
        assert batcher.queued_items == 4
        with pytest.raises(ResourceExhausted, match="max_queue_items=4"):
            await batcher.submit([7])
        model.release.set()
        results = await asyncio.gather(running, queued)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [[10.0, 20.0], [30.0, 40.0, 50.0, 60.0]]


def test_cancelled_callers_do_not_break_others():
    async def scenario():
        model = FakeModel(hold=True)
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=8, max_wait_ms=0))
        in_batch = asyncio.ensure_future(batcher.submit([1, 2]))
        await _wait_entered(model)
        queued = asyncio.ensure_future(batcher.submit([3]))
        survivor = asyncio.ensure_future(batcher.submit([4]))
        await asyncio.sleep(0)
        in_batch.cancel()  # its items are being scored right now
        queued.cancel()  # its item is still waiting
        model.release.set()
        result = await survivor
        after = await batcher.submit([5])
        for task in (in_batch, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        await batcher.close()
        return model, result, after

    model, result, after = asyncio.run(scenario())
    assert (result, after) == ([40.0], [50.0])
    assert model.batches == [[1, 2], [4], [5]]  # the cancelled waiting item was never scored


def test_a_failing_batch_fails_its_callers_only():
    calls = []

    def flaky(items: list[int]) -> list[float]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [float(x) for x in items]

    async def scenario():
        batcher = DynamicBatcher("m", flaky, BatcherConfig(max_wait_ms=0))
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([1])
        result = await batcher.submit([2])
        stats = batcher.stats()
        await batcher.close()
        return result, stats

    result, stats = asyncio.run(scenario())
    assert result == [2.0] and stats.failed_batches == 1


def test_wrong_score_count_is_an_error():
    async def scenario():
        batcher = DynamicBatcher("m", lambda items: [0.0], BatcherConfig(max_wait_ms=0))
        try:
            with pytest.raises(RuntimeError, match="returned 1 scores for 2 items"):
                await batcher.submit([1, 2])
        finally:
            await batcher.close()

    asyncio.run(scenario())


def test_close_fails_waiting_callers_and_refuses_new_ones():
    async def scenario():
        model = FakeModel(hold=True)
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=1, max_wait_ms=0))
        running = asyncio.ensure_future(batcher.submit([1]))
        await _wait_entered(model)
        waiting = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        model.release.set()  # lets the executor thread finish so close() can join it
        await batcher.close()
        for task in (running, waiting):
            with pytest.raises(Unavailable):
                await task
        with pytest.raises(Unavailable):
            await batcher.submit([3])

    asyncio.run(scenario())


@settings(max_examples=25, deadline=None)
@given(
    requests=st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=20), min_size=1, max_size=12),
    max_batch_size=st.integers(1, 16),
)
def test_every_caller_gets_its_own_scores_in_order(requests, max_batch_size):
    async def scenario():
        model = FakeModel()
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=max_batch_size, max_wait_ms=1))
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert results == [[x * 10.0 for x in r] for r in requests]
    assert all(1 <= len(b) <= max_batch_size for b in model.batches)
    assert sum(len(b) for b in model.batches) == sum(len(r) for r in requests)
