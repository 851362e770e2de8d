"""A policy servicer and its weight manager in-process, without a gRPC server: for unit tests of the weight lifecycle.

`LocalPolicy` runs a real `PolicyServicer` over a real `WeightManager` on an
event loop in a thread and exposes a blocking stub (`PolicyServiceStub`'s call
shape: `stub.Method(request, timeout=...)`). Domain errors come back as
`grpc.RpcError`s with the status code the service interceptor would give them,
so clients (the trainer's replica client, vLLM's NCCL trainer engine) run
against it unchanged. `FakeWeightEngine` is the engine adapter's weight surface:
it records what it loads and can be told to fail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import torch
from safetensors.torch import load_file

from services.common.errors import ServiceError
from services.common.weight_stream import TensorSpec
from services.policy.sampling import Limits
from services.policy.server import PolicyServicer
from services.policy.weight_history import WeightHistory
from services.policy.weights import WeightManager


class LocalRpcError(grpc.RpcError):
    """What a client sees when the in-process servicer raises: the interceptor's status code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


class FakeWeightEngine:
    """Loads staged safetensors files into a dict; `fail_next` makes the next load raise midway."""

    description = "fake"

    def __init__(self, transfer_workers: int = 0) -> None:
        self.transfer_workers = transfer_workers
        self.weights: dict[str, torch.Tensor] = {}
        self.loads: list[list[str]] = []  # names loaded, per load
        self.fail_next = False
        self.aborted: list[str] = []

    async def load_weights(self, staged_file: str) -> int:
        tensors = await asyncio.to_thread(load_file, staged_file)
        if self.fail_next:
            self.fail_next = False
            half = dict(list(tensors.items())[: len(tensors) // 2])
            self.weights.update(half)  # a load that dies midway leaves a mix
            raise RuntimeError("worker died while loading")
        self.weights.update(tensors)
        self.loads.append(sorted(tensors))
        return len(tensors)

    async def init_weight_transfer(self, init_info: dict) -> None:
        raise NotImplementedError

    async def receive_weights(self, update_info: dict) -> int:
        raise NotImplementedError

    async def abort(self, request_ids: list[str]) -> None:
        self.aborted.extend(request_ids)


class LocalPolicy:
    """A PolicyServicer over a WeightManager on its own event loop; `stub` calls it as a gRPC stub would."""

    def __init__(
        self,
        engine: Any,
        manifest: dict[str, TensorSpec],
        staging: Path,
        history: WeightHistory | None = None,
        weight_transfer: str = "grpc",
        nccl_reserve_timeout_s: float = 30.0,
        fused_groups: tuple[tuple[str, ...], ...] | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.weights = WeightManager(
            engine,
            manifest,
            staging,
            max_push_bytes=10**9,
            drain_timeout_s=1,
            fused_groups=fused_groups,
            history=history,
            weight_transfer=weight_transfer,
            nccl_reserve_timeout_s=nccl_reserve_timeout_s,
        )
        self.servicer = PolicyServicer(engine, None, Limits(1, 1, 1, 2, 10), self.weights, model_name="m")
        self.weights.mark_serving()
        self.stub = LocalStub(self)

    def call(self, coro, timeout: float | None = 60) -> Any:
        """Runs a coroutine on the servicer's loop and waits for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class LocalStub:
    """`PolicyServiceStub`'s call shape over a LocalPolicy; errors map to statuses as the interceptor maps them."""

    def __init__(self, policy: LocalPolicy) -> None:
        self._policy = policy

    def __getattr__(self, method: str):
        handler = getattr(self._policy.servicer, method)

        def call(request: Any, timeout: float | None = None) -> Any:
            if method == "PushWeights":
                request = _aiter(request)
            try:
                return self._policy.call(handler(request, None), timeout)
            except ServiceError as exc:
                raise LocalRpcError(exc.code, str(exc)) from exc
            except TimeoutError as exc:
                raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from exc

        return call


async def _aiter(requests: Iterable[Any]):
    for request in requests:
        yield request
