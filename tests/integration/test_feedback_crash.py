"""Crash test: SIGKILL the feedback service while clients submit; every acknowledged record survives."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc
from services.common.client import open_channel
from services.common.security import ClientSecurity
from services.experience.store import ExperienceStore
from tests.integration.feedback_support import seed_samples, start_experience_service

pytestmark = pytest.mark.integration

CLIENTS = 4


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_feedback_survives_sigkill(backend, request, tmp_path):
    url = f"sqlite:///{tmp_path}/crash.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    (samples,) = seed_samples(url, prompts=1, per_prompt=99)
    process, address, _ = start_experience_service(url, tmp_path / "before.log", "--rate-limit", "0")

    acked: list[set[str]] = [set() for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(index: int) -> None:
        with open_channel(address, security=ClientSecurity()) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            for sample_id in samples:
                request_ = fb.SubmitFeedbackRequest(
                    rater_id=f"rater-{index}",
                    body=fb.FeedbackBody(thumbs=fb.Thumbs(sample_id=sample_id, up=index % 2 == 0)),
                )
                try:
                    reply = stub.SubmitFeedback(request_, timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        failures.append(f"{exc.code()}: {exc.details()}")
                    return
                acked[index].add(reply.feedback_id)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(map(len, acked)) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.process.kill()  # SIGKILL: no drain, no clean close of the database
    process.process.wait(10)
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    acknowledged = set().union(*acked)
    assert 40 <= len(acknowledged) < CLIENTS * len(samples), "the kill must land while clients are still submitting"

    restarted, address, _ = start_experience_service(url, tmp_path / "after.log", "--rate-limit", "0")
    try:
        with open_channel(address, security=ClientSecurity()) as channel:
            export = feedback_pb2_grpc.FeedbackServiceStub(channel).ExportFeedback(
                fb.ExportFeedbackRequest(limit=10000)
            )
        stored = {r.feedback_id for r in export.records}
        missing = acknowledged - stored
        assert not missing, f"{len(missing)} acknowledged records lost"
        store = ExperienceStore.open(url)
        rows = store.counts().feedback
        store.close()
        assert rows == len(stored) >= len(acknowledged)  # a record may commit without its reply arriving
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
