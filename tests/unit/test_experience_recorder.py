"""The traffic recorder: writes in the background, drops and counts under trouble, never blocks."""

from __future__ import annotations

import threading
import time

import pytest

from services.experience.recorder import ExperienceRecorder
from services.experience.records import SampleRecord


def record(i: int, prompt_text: str | None = "p") -> SampleRecord:
    return SampleRecord(f"s{i}", "req", "default", 0, i, prompt_text, False, [1, 2], "c", [3], [-0.5], "stop", 0, 0.0)


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_records_reach_the_sink_in_batches_and_prompts_are_decoded():
    batches = []
    recorder = ExperienceRecorder(batches.append, capacity=100, batch_size=8, decode=lambda ids: f"decoded {ids}")
    for i in range(20):
        assert recorder.record(record(i, prompt_text=None if i == 0 else "p"))
    wait_for(lambda: recorder.written == 20)
    recorder.close()
    written = [r for batch in batches for r in batch]
    assert [r.sample_id for r in written] == [f"s{i}" for i in range(20)]
    assert all(len(batch) <= 8 for batch in batches)
    assert written[0].prompt_text == "decoded [1, 2]" and written[1].prompt_text == "p"
    assert recorder.dropped == {}


def test_a_stuck_store_never_blocks_record_and_overflow_is_counted():
    """The sink blocks until released; record() must still return at once, every time."""
    release = threading.Event()
    entered = threading.Event()

    def stuck_sink(batch):
        entered.set()
        release.wait(60)

    recorder = ExperienceRecorder(stuck_sink, capacity=5, batch_size=1)
    recorder.record(record(0))
    assert entered.wait(5)  # the writer holds one record inside the stuck sink

    results = []
    caller = threading.Thread(target=lambda: results.extend(recorder.record(record(i)) for i in range(1, 1001)))
    caller.start()
    caller.join(10)  # with a blocking record() this would hang until the sink is released (60 s)
    assert not caller.is_alive(), "record() blocked on a stuck store"
    assert results.count(True) == 5 and results.count(False) == 995
    assert recorder.dropped == {"buffer_full": 995}
    release.set()
    wait_for(lambda: recorder.written == 6)
    recorder.close()


def test_failing_store_drops_batches_counts_them_and_recovers():
    calls = []
    healthy = threading.Event()

    def flaky_sink(batch):
        calls.append(len(batch))
        if not healthy.is_set():
            raise ConnectionError("database is down")

    recorder = ExperienceRecorder(flaky_sink, capacity=100, batch_size=10, backoff_s=(0.01, 0.05))
    for i in range(3):
        recorder.record(record(i))
    wait_for(lambda: recorder.dropped.get("store_error", 0) == 3)
    healthy.set()
    for i in range(3, 7):
        recorder.record(record(i))
    wait_for(lambda: recorder.written == 4)
    recorder.close()
    assert recorder.dropped == {"store_error": 3}


def test_close_flushes_what_is_buffered_and_refuses_later_records():
    written = []
    gate = threading.Event()

    def slow_sink(batch):
        gate.wait(5)
        written.extend(batch)

    recorder = ExperienceRecorder(slow_sink, capacity=100, batch_size=100)
    for i in range(10):
        recorder.record(record(i))
    gate.set()
    recorder.close(timeout_s=5)
    assert len(written) == 10 and recorder.written == 10
    assert recorder.record(record(99)) is False
    assert recorder.dropped == {"shutdown": 1}


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        ExperienceRecorder(lambda batch: None, capacity=0)
