"""Tenant quotas on a real server: the over-quota tenant is refused with a retry hint, others are served."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import open_channel
from services.common.tenancy import TENANT_METADATA_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def stub(reward_server):
    with open_channel(reward_server.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def _request(model: str, n: int) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        model=model,
        items=[reward_pb2.ScoreItem(prompt=f"p{i}", completion=f"a completion about book {i}") for i in range(n)],
    )


def _as(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_METADATA_KEY, tenant),)


def test_rate_limited_tenant_is_refused_with_retry_after_while_others_are_served(stub):
    # Quotas file: tenant `limited` gets 10 item evaluations/s with a burst of 4.
    stub.Score(_request("length", 4), metadata=_as("limited"), timeout=30)
    with pytest.raises(grpc.RpcError) as error:
        stub.Score(_request("length", 4), metadata=_as("limited"), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'limited' is over its rate limit of 10 items/s" in error.value.details()
    retry_after = dict(error.value.trailing_metadata())["retry-after-ms"]
    assert 1 <= int(retry_after) <= 400
    assert f"retry after ~{retry_after} ms" in error.value.details()

    for tenant in ("default", "team-b"):  # meanwhile everyone else is served, in full
        metadata = () if tenant == "default" else _as(tenant)
        assert len(stub.Score(_request("length", 64), metadata=metadata, timeout=30).scores) == 64

    time.sleep(int(retry_after) / 1000)
    assert len(stub.Score(_request("length", 4), metadata=_as("limited"), timeout=30).scores) == 4


def test_concurrency_limited_tenant_gets_one_request_in_flight(reward_server):
    # Quotas file: tenant `single` may have one request in flight. Eight large similarity requests at
    # once: one runs, the others are refused immediately (never queued); another tenant is served.
    callers, results = 8, []
    barrier = threading.Barrier(callers + 1)

    def call(tenant: str) -> None:
        with open_channel(reward_server.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            barrier.wait(timeout=30)
            try:
                stub.Score(_request("similarity", 128), metadata=_as(tenant), timeout=120)
                results.append((tenant, "OK"))
            except grpc.RpcError as exc:
                results.append((tenant, exc.code().name, exc.details()))

    threads = [threading.Thread(target=call, args=("single",)) for _ in range(callers)]
    threads.append(threading.Thread(target=call, args=("other",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    single = [r for r in results if r[0] == "single"]
    refused = [r for r in single if r[1] == "RESOURCE_EXHAUSTED"]
    assert len(single) == callers and ("other", "OK") in results
    assert ("single", "OK") in single
    assert refused and all("max_concurrent_requests=1" in r[2] for r in refused)
    assert len(refused) + single.count(("single", "OK")) == callers
