"""gRPC clients for the trainer: the only way it reaches the policy and reward services."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
import torch

from rlhf.v1 import policy_pb2, policy_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.common.client import open_channel
from services.common.weight_stream import push_requests

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def with_retries(call: Callable[[], T], what: str, retries: int) -> T:
    """Retries transient failures with exponential backoff and jitter (bounded)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in _RETRYABLE or attempt == retries:
                raise
            delay = min(30.0, 2.0**attempt) * (0.5 + random.random())
            log.warning("%s failed with %s (%s); retry %d/%d in %.1f s", what, exc.code().name, exc.details(), attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class PolicyClient:
    def __init__(self, address: str, timeout_s: float, retries: int) -> None:
        self.channel = open_channel(address)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries

    def status(self) -> policy_pb2.GetStatusResponse:
        return with_retries(lambda: self.stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=30), "GetStatus", self.retries)

    def generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        return with_retries(lambda: self.stub.Generate(request, timeout=self.timeout_s), "Generate", self.retries)

    def push(
        self, tensors: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int, expected_version: int | None, note: str
    ) -> policy_pb2.PushWeightsResponse:
        items = list(tensors)
        return with_retries(
            lambda: self.stub.PushWeights(
                push_requests(items, chunk_bytes, expected_version, note), timeout=self.timeout_s
            ),
            "PushWeights",
            self.retries,
        )

    def close(self) -> None:
        self.channel.close()


class RewardClient:
    def __init__(self, address: str, timeout_s: float, retries: int) -> None:
        self.channel = open_channel(address)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries

    def score(self, model: str, items: list[reward_pb2.ScoreItem]) -> reward_pb2.ScoreResponse:
        request = reward_pb2.ScoreRequest(model=model, items=items)
        return with_retries(lambda: self.stub.Score(request, timeout=self.timeout_s), "Score", self.retries)

    def close(self) -> None:
        self.channel.close()
