"""Timed gRPC calls: each sends one request and returns what the client saw (`RequestResult`).

Timing is client-side from the moment the call is made, as `vllm bench serve`
does over HTTP: a streamed response gives TTFT (first message carrying tokens),
the gaps between later token-carrying messages (ITL) and E2EL (last message);
a unary response gives E2EL only. A failed RPC is a result with its gRPC status
name, not an exception, so errors are counted by code.
"""

from __future__ import annotations

import time

import grpc

from rlhf.v1 import policy_pb2, policy_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.loadtest.summary import RequestResult


def _failure(started: float, exc: grpc.aio.AioRpcError) -> RequestResult:
    return RequestResult(
        started=started, success=False, e2el=time.perf_counter() - started, error=exc.code().name, detail=exc.details() or ""
    )


class PolicyCaller:
    """Generate / GenerateStream on one channel."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self.stub = policy_pb2_grpc.PolicyServiceStub(channel)
        self.timeout_s = timeout_s

    async def vocab_size(self) -> int:
        """Synthetic prompts need the served tokenizer's vocabulary size."""
        status = await self.stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=self.timeout_s)
        return int(status.vocab_size)

    async def generate_stream(self, request: policy_pb2.GenerateRequest) -> RequestResult:
        started = time.perf_counter()
        first_token = last_token = None
        gaps: list[float] = []
        input_tokens = output_tokens = 0
        try:
            async for message in self.stub.GenerateStream(request, timeout=self.timeout_s):
                now = time.perf_counter()
                input_tokens += len(message.prompt_token_ids)
                if not message.token_ids:
                    continue
                if first_token is None:
                    first_token = now
                else:
                    gaps.append(now - last_token)
                last_token = now
                output_tokens += len(message.token_ids)
        except grpc.aio.AioRpcError as exc:
            return _failure(started, exc)
        end = last_token if last_token is not None else time.perf_counter()
        return RequestResult(
            started=started,
            success=True,
            e2el=end - started,
            ttft=None if first_token is None else first_token - started,
            itl=tuple(gaps),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def generate(self, request: policy_pb2.GenerateRequest) -> RequestResult:
        started = time.perf_counter()
        try:
            reply = await self.stub.Generate(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return _failure(started, exc)
        elapsed = time.perf_counter() - started
        return RequestResult(
            started=started,
            success=True,
            e2el=elapsed,
            input_tokens=sum(len(result.prompt_token_ids) for result in reply.results),
            output_tokens=sum(len(sample.token_ids) for result in reply.results for sample in result.samples),
        )


class RewardCaller:
    """Score on one channel."""

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
            return _failure(started, exc)
        return RequestResult(
            started=started, success=True, e2el=time.perf_counter() - started, items=len(reply.scores)
        )
