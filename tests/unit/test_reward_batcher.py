"""Dynamic batcher logic with a fake scoring function (no model, no gRPC)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ResourceExhausted, Unavailable
from services.reward.batcher import BatcherConfig, DynamicBatcher
from services.reward.overload import Overloaded


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
            "m", model.score, BatcherConfig(max_batch_size=32, max_wait_ms=50), on_batch=lambda r: sizes.append(r.size)
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


def test_token_budget_closes_a_batch_by_padded_tokens():
    """rows x items x longest <= budget: short items batch together, a long one goes with few."""

    async def scenario():
        model, reports = FakeModel(hold=True), []
        config = BatcherConfig(max_batch_size=32, max_wait_ms=0, max_batch_tokens=100)
        batcher = DynamicBatcher("m", model.score, config, on_batch=reports.append, rows_per_item=2)
        blocker = asyncio.ensure_future(batcher.submit([0], [1]))
        await _wait_entered(model)
        # Queued while the blocker runs: 5 items of 10 tokens fit (2 x 5 x 10 = 100), the 6th does not;
        # then a 40-token item fits with one 10-token item only (2 x 2 x 40 = 160 > 100): it runs alone,
        # and a 60-token item exceeds the budget by itself and still runs, alone.
        queued = asyncio.ensure_future(batcher.submit([1, 2, 3, 4, 5, 6, 7, 8], [10, 10, 10, 10, 10, 10, 40, 60]))
        await asyncio.sleep(0)
        model.release.set()
        results = await asyncio.gather(blocker, queued)
        await batcher.close()
        return model, reports, results

    model, reports, results = asyncio.run(scenario())
    assert results == [[0.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]]
    assert model.batches == [[0], [1, 2, 3, 4, 5], [6], [7], [8]]
    assert [r.padded_tokens for r in reports] == [2, 100, 20, 80, 120]


def test_token_budget_waits_for_a_fuller_batch_only_while_it_fits():
    async def scenario():
        model = FakeModel()
        config = BatcherConfig(max_batch_size=32, max_wait_ms=10_000, max_batch_tokens=64)
        batcher = DynamicBatcher("m", model.score, config)
        # Items of 30 and 40 tokens cannot share a batch (2 x 40 > 64), so the first batch is full
        # at once instead of waiting 10 s for company; the 40-token item then waits alone.
        request = asyncio.ensure_future(batcher.submit([1, 2], [30, 40]))
        await _wait_entered(model)
        await batcher.close()
        with pytest.raises(Unavailable):
            await request
        return model

    assert asyncio.run(scenario()).batches == [[1]]


def test_full_queue_gives_a_retry_hint():
    async def scenario():
        model = FakeModel(hold=True)
        batcher = DynamicBatcher("m", model.score, BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue_items=1))
        running = asyncio.ensure_future(batcher.submit([1]))
        await _wait_entered(model)
        queued = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        try:
            await batcher.submit([3])
        except Overloaded as exc:
            error = exc
        model.release.set()
        await asyncio.gather(running, queued)
        await batcher.close()
        return error

    error = asyncio.run(scenario())
    assert error.retry_after_ms >= 1
    assert f"retry after ~{error.retry_after_ms} ms" in str(error)
