"""Batches made ahead on a background thread, so generation of N+1 overlaps training on N.

The producer starts a batch only once the trainer has taken the previous one (one
slot), so in steady state a batch is sampled with the weights one push behind the
trainer's: staleness 1, which the trainer's max_staleness check and truncated
importance sampling handle. Generate and Score are gRPC calls that release the GIL,
so the thread costs the training thread little.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.trainer.rollout import Batch

log = logging.getLogger(__name__)


class SyncBatches:
    """Makes each batch when asked (synchronous, on-policy)."""

    def __init__(self, make: Callable[[int], Batch], first_index: int) -> None:
        self.make, self.index = make, first_index

    def next(self) -> Batch:
        batch = self.make(self.index)
        self.index += 1
        return batch

    def close(self) -> None:
        pass


class AsyncBatches:
    """Makes batches on a daemon thread, one ahead of the consumer."""

    def __init__(self, make: Callable[[int], Batch], first_index: int) -> None:
        self.make = make
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._slot = threading.Semaphore(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first_index,), name="rollout-producer", daemon=True)
        self._thread.start()

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            if not self._slot.acquire(timeout=0.2):
                continue
            if self._stop.is_set():
                return
            try:
                batch = self.make(index)
            except BaseException as exc:  # handed to the consumer, which raises it
                self._ready.put(exc)
                return
            self._ready.put(batch)
            index += 1

    def next(self) -> Batch:
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError("the rollout producer thread failed") from item
        self._slot.release()  # the producer may start the next batch now
        return item

    def close(self) -> None:
        self._stop.set()
        self._slot.release()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            log.warning("rollout producer still inside a Generate/Score call at close; it stops when the call returns")


@dataclass(frozen=True)
class FreshBatch:
    batch: Batch
    staleness: list[int]  # per sample: trainer version - the version that sampled it
    dropped: int  # batches skipped for being too old
    wait_s: float  # time spent waiting for batches


def take_fresh(batches: SyncBatches | AsyncBatches, version: int, max_staleness: int) -> FreshBatch:
    """The next batch whose samples are at most `max_staleness` versions behind `version`."""
    dropped, waited = 0, 0.0
    while True:
        started = time.perf_counter()
        batch = batches.next()
        waited += time.perf_counter() - started
        staleness = [version - v for v in batch.versions]
        if max(staleness) <= max_staleness:
            return FreshBatch(batch, staleness, dropped, waited)
        dropped += 1
        log.warning(
            "dropping batch %d: sampled with versions %s, trainer at %d (max staleness %d)",
            batch.index,
            sorted(set(batch.versions)),
            version,
            max_staleness,
        )
