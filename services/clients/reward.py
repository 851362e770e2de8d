"""The reward service's client: scoring, model listing and publishing, for every program that calls it.

The service may run as several replicas (comma-separated addresses, or `dns:///name:port`).
`RewardClient` sends Score round-robin with failover; a replica whose model lags another's
(it still serves a version another replica has replaced) is left out until it catches up.
`publish_checkpoint` is the admin call that hot-swaps a trained reward model in;
`RewardCaller` is the asyncio face the load tester times calls with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.clients import metrics
from services.clients.replica_pool import ReplicaPool, split_addresses
from services.clients.timing import RequestResult, failure
from services.common.client import open_channel

log = logging.getLogger(__name__)

__all__ = ["RewardCaller", "RewardClient", "RewardReplica", "publish_checkpoint"]

PROBE_TIMEOUT_S = 5.0


@dataclass
class RewardReplica:
    name: str
    address: str
    channel: grpc.Channel
    stub: reward_pb2_grpc.RewardServiceStub
    in_rotation: bool = True
    reason: str = ""
    latest: dict[str, str] = field(default_factory=dict)  # model -> latest version, as last listed


class RewardClient:
    """Reward replicas behind round-robin with failover; lagging model versions leave the rotation."""

    def __init__(
        self, address: str | Iterable[str], timeout_s: float = 300.0, retries: int = 3, wait_s: float = 300.0
    ) -> None:
        addresses = split_addresses(address)
        named = len(addresses) > 1
        self.replicas = []
        for i, a in enumerate(addresses):
            channel = open_channel(a)
            self.replicas.append(
                RewardReplica(
                    f"reward[{i}]" if named else "reward", a, channel, reward_pb2_grpc.RewardServiceStub(channel)
                )
            )
        self.pool = ReplicaPool("reward", self.replicas, wait_s, self.recover)
        self.timeout_s, self.retries = timeout_s, retries
        self.models: tuple[str, ...] = ()  # models whose versions must agree across replicas (set by the trainer)

    def score(self, model: str, items: list[reward_pb2.ScoreItem]) -> reward_pb2.ScoreResponse:
        request = reward_pb2.ScoreRequest(model=model, items=items)
        return self.pool.call(lambda r: r.stub.Score(request, timeout=self.timeout_s), f"Score({model})")

    def hosted(self, model: str) -> str | None:
        """The latest version of `model`, or None when the service does not host it."""
        request = reward_pb2.ListModelsRequest()
        reply = self.pool.call(lambda r: r.stub.ListModels(request, timeout=PROBE_TIMEOUT_S * 6), "ListModels")
        return next((m.version for m in reply.models if m.name == model), None)

    def recover(self) -> None:
        """Lists every replica's models; out of rotation: unreachable ones and those behind another replica."""
        listed: dict[str, reward_pb2.ListModelsResponse] = {}
        for replica in self.replicas:
            try:
                listed[replica.name] = replica.stub.ListModels(reward_pb2.ListModelsRequest(), timeout=PROBE_TIMEOUT_S)
            except grpc.RpcError as exc:
                self.pool.take_out(replica, f"ListModels: {exc.code().name}")
        older: dict[str, set[str]] = {}  # model -> versions some replica has replaced with a newer one
        for reply in listed.values():
            for info in reply.models:
                older.setdefault(info.name, set()).update(info.loaded_versions[:-1])
        for replica in self.replicas:
            if replica.name not in listed:
                continue
            replica.latest = {info.name: info.version for info in listed[replica.name].models}
            behind = [f"{m}@{replica.latest[m]}" for m in self.models if replica.latest.get(m) in older.get(m, set())]
            if behind:
                self.pool.take_out(replica, f"serves older reward model versions: {', '.join(behind)}")
            else:
                self.pool.put_back(replica)
        metrics.REPLICAS_IN_ROTATION.labels("reward").set(len(self.pool.live()))

    def close(self) -> None:
        for replica in self.replicas:
            replica.channel.close()


def publish_checkpoint(address: str, model: str, path: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Hot-swaps a reward-model checkpoint into a running reward service (LoadModel when the name is new)."""
    declaration = reward_pb2.ModelDeclaration(
        name=model, kind=reward_pb2.REWARD_KIND_CLASSIFIER, path=str(path.resolve())
    )
    with open_channel(address) as channel:
        stub = reward_pb2_grpc.RewardAdminServiceStub(channel)
        try:
            reply = stub.PublishVersion(reward_pb2.PublishVersionRequest(model=declaration), timeout=timeout_s)
            result = {"model": reply.model, "version": reply.version, "previous_version": reply.previous_version}
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            loaded = stub.LoadModel(reward_pb2.LoadModelRequest(model=declaration), timeout=timeout_s)
            result = {"model": loaded.model.name, "version": loaded.model.version, "previous_version": ""}
    log.info("published %s to %s as %s version=%s", path, address, model, result["version"])
    return result


class RewardCaller:
    """Score on one asyncio channel, each call timed (`RequestResult`)."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self.stub = reward_pb2_grpc.RewardServiceStub(channel)
        self.timeout_s = timeout_s

    async def model_names(self) -> list[str]:
        reply = await self.stub.ListModels(reward_pb2.ListModelsRequest(), timeout=self.timeout_s)
        return [model.name for model in reply.models]

    async def score(self, request: reward_pb2.ScoreRequest) -> RequestResult:
        started = time.perf_counter()
        try:
            reply = await self.stub.Score(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return failure(started, exc)
        return RequestResult(started=started, success=True, e2el=time.perf_counter() - started, items=len(reply.scores))
