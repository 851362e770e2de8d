"""Recording served samples without ever making a user wait on the database.

`ExperienceRecorder.record()` puts a record in a bounded in-memory buffer and
returns at once; one background thread drains the buffer in batches into the
store. When the store is slow or down the buffer fills and further records are
dropped and counted (`rlhf_policy_records_dropped_total{reason="buffer_full"}`);
a failed write drops its batch (`reason="store_error"`) and the writer backs off
before the next try, so a dead database costs log lines and counters, never
serving latency or errors. Recording is best effort by design; feedback, which
is acknowledged to a user, is not (see store.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from services.experience import metrics
from services.experience.records import SampleRecord

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[SampleRecord]], None]


class ExperienceRecorder:
    """A bounded buffer of SampleRecords and the thread that writes them to `sink`.

    `sink` is usually `ExperienceStore.record_samples`; `decode` (token ids -> text)
    fills in prompts that arrived as token ids, on the writer thread.
    """

    def __init__(
        self,
        sink: Sink,
        capacity: int = 4096,
        batch_size: int = 64,
        decode: Callable[[list[int]], str] | None = None,
        backoff_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self._sink = sink
        self._decode = decode
        self._batch_size = batch_size
        self._backoff = backoff_s
        self._buffer: queue.Queue[SampleRecord] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="experience-recorder", daemon=True)
        self._thread.start()

    # ---- serving side: never blocks -----------------------------------------

    def record(self, record: SampleRecord) -> bool:
        """Buffers `record`; False (and counted) if the buffer is full or the recorder closed."""
        if self._stop.is_set():
            self._count_dropped("shutdown", 1)
            return False
        try:
            self._buffer.put_nowait(record)
        except queue.Full:
            self._count_dropped("buffer_full", 1)
            return False
        metrics.RECORD_BUFFER_ITEMS.set(self._buffer.qsize())
        return True

    # ---- observability ------------------------------------------------------

    @property
    def written(self) -> int:
        with self._lock:
            return self._counts["written"]

    @property
    def dropped(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._counts.items() if k != "written"}

    @property
    def buffered(self) -> int:
        return self._buffer.qsize()

    def _count_dropped(self, reason: str, n: int) -> None:
        with self._lock:
            self._counts[reason] += n
        metrics.RECORDS_DROPPED.labels(reason).inc(n)

    # ---- writer thread ------------------------------------------------------

    def _take_batch(self, timeout_s: float) -> list[SampleRecord]:
        try:
            batch = [self._buffer.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._buffer.get_nowait())
            except queue.Empty:
                break
        metrics.RECORD_BUFFER_ITEMS.set(self._buffer.qsize())
        return batch

    def _write(self, batch: list[SampleRecord]) -> bool:
        if self._decode is not None:
            for record in batch:
                if record.prompt_text is None:
                    try:
                        record.prompt_text = self._decode(record.prompt_token_ids)
                    except Exception:  # noqa: BLE001 - a prompt we cannot decode is still worth recording
                        record.prompt_text = ""
        try:
            self._sink(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure drops the batch, serving goes on
            self._count_dropped("store_error", len(batch))
            now = time.monotonic()
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.warning(
                    "experience store write failed; dropped %d records (%s: %s)", len(batch), type(exc).__name__, exc
                )
            return False
        with self._lock:
            self._counts["written"] += len(batch)
        metrics.RECORDS_WRITTEN.inc(len(batch))
        return True

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            batch = self._take_batch(timeout_s=0.2)
            if not batch:
                continue
            if self._write(batch):
                delay = self._backoff[0]
            else:
                self._stop.wait(delay)  # back off; meanwhile the bounded buffer absorbs or drops
                delay = min(delay * 2, self._backoff[1])

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops accepting, writes what is buffered for up to `timeout_s`, counts the rest as dropped."""
        self._stop.set()
        self._thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self._thread.is_alive() and time.monotonic() < deadline:
            batch = self._take_batch(timeout_s=0)
            if not batch or not self._write(batch):
                break
        left = self._buffer.qsize()
        if left:
            self._count_dropped("shutdown", left)
        log.info("experience recorder closed: written=%d dropped=%s", self.written, self.dropped)
