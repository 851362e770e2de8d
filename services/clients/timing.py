"""What a client saw of one call (`RequestResult`): the asyncio client faces time their calls with it.

Timing is client-side from the moment the call is made, as `vllm bench serve` does over
HTTP: a streamed response gives TTFT (first message carrying tokens), the gaps between later
token-carrying messages (ITL) and E2EL (last message); a unary response gives E2EL only. A
failed RPC is a result with its gRPC status name, not an exception, so errors are counted by code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class RequestResult:
    """What the client saw of one request. Times in seconds; `error` is a gRPC status name."""

    started: float
    success: bool
    e2el: float = 0.0
    ttft: float | None = None
    itl: tuple[float, ...] = field(default_factory=tuple)
    input_tokens: int | None = None
    output_tokens: int = 0
    items: int = 0
    error: str = ""
    detail: str = ""

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


def failure(started: float, exc: grpc.aio.AioRpcError) -> RequestResult:
    """The result of a call that ended in a gRPC error."""
    return RequestResult(
        started=started,
        success=False,
        e2el=time.perf_counter() - started,
        error=exc.code().name,
        detail=exc.details() or "",
    )
