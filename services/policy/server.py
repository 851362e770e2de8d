"""The PolicyService servicer: validate, call the engine adapter or the weight manager, build the reply.

Generation goes to the engine under a lease of the manager's version gate;
every weight change (push, NCCL reserve/commit, rollback) goes to the
`WeightManager`, whose `ServiceError`s the interceptor maps to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.weight_stream import checksum_named
from services.policy import metrics
from services.policy.engine import SampleDelta, VllmEngine
from services.policy.generate_reply import FINISH_REASONS, generate_reply
from services.policy.nccl_push import check_init
from services.policy.prompt_tokens import PromptEncoder
from services.policy.recording import SampleIds, Traffic
from services.policy.sampling import (
    Limits,
    SamplingSpec,
    check_prompt_count,
    check_request_id,
    check_token_ids,
    parse_sampling,
)
from services.policy.weight_history import RetainedVersion
from services.policy.weights import PushResult, WeightManager

log = logging.getLogger(__name__)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        engine: VllmEngine,
        tokenizer,
        limits: Limits,
        weights: WeightManager,
        model_name: str,
        max_concurrent_requests: int = 256,
        traffic: Traffic | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.prompt_encoder = PromptEncoder(tokenizer)  # text, token ids or [system, user] chat -> token ids
        self.limits = limits
        self.weights = weights  # the served weights' lifecycle: state, version gate, pushes, rollback, history
        self.model_name = model_name
        self.traffic = traffic or SampleIds()  # sample ids; records served samples when a store is set
        self._admitted = 0
        self.max_concurrent_requests = max_concurrent_requests

    def mark_serving(self) -> None:
        self.weights.mark_serving()

    # ---- generation -------------------------------------------------------

    def _prompt_ids(self, request: policy_pb2.GenerateRequest, spec: SamplingSpec) -> list[list[int]]:
        check_prompt_count(len(request.prompts), self.limits)
        prompts = []
        for index, prompt in enumerate(request.prompts):
            ids = self.prompt_encoder.token_ids(index, prompt)
            check_token_ids(index, ids, spec, self.limits)
            prompts.append(ids)
        return prompts

    @contextlib.contextmanager
    def _admission(self):
        """Bounds concurrent generation calls: excess load is refused at once, never queued without limit."""
        if self._admitted >= self.max_concurrent_requests:
            raise ResourceExhausted(
                f"{self._admitted} generation requests in progress (limit {self.max_concurrent_requests}); retry with backoff"
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def _validate(self, request: policy_pb2.GenerateRequest) -> tuple[SamplingSpec, list[list[int]]]:
        check_request_id(request.request_id)
        spec = parse_sampling(request.sampling, self.limits)
        return spec, self._prompt_ids(request, spec)

    async def _stream_sample(
        self, tag: str, prompt_ids: list[int], spec: SamplingSpec, sample_index: int, prompt_index: int = 0
    ) -> AsyncIterator[SampleDelta]:
        engine_id = f"{tag}-{uuid.uuid4().hex[:12]}"
        arrival = time.perf_counter()
        first_at = last_at = None
        generated = 0
        self.weights.in_flight.add(engine_id)
        metrics.REQUESTS_RUNNING.inc()
        metrics.PROMPT_TOKENS.inc(len(prompt_ids))
        try:
            async for delta in self.engine.generate(engine_id, prompt_ids, spec, sample_index, prompt_index):
                now = time.perf_counter()
                if delta.token_ids:
                    if first_at is None:
                        first_at = now
                        metrics.TIME_TO_FIRST_TOKEN.observe(now - arrival)
                    else:
                        metrics.INTER_TOKEN_LATENCY.observe(now - last_at)
                    last_at = now
                    generated += len(delta.token_ids)
                metrics.GENERATION_TOKENS.inc(len(delta.token_ids))
                if delta.finish_reason is not None:
                    metrics.REQUEST_SUCCESS.labels(delta.finish_reason).inc()
                    metrics.E2E_LATENCY.observe(now - arrival)
                    if generated > 1:
                        metrics.TIME_PER_OUTPUT_TOKEN.observe((last_at - first_at) / (generated - 1))
                yield delta
        finally:
            metrics.REQUESTS_RUNNING.dec()
            self.weights.in_flight.discard(engine_id)

    async def Generate(self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self.weights.check_serving()
        spec, prompts = self._validate(request)
        with self._admission():
            response = await self._generate(prompts, spec, request.request_id or "gen")
        self.traffic.finish_generate(request, context, response)
        return response

    async def _generate(self, prompts: list[list[int]], spec: SamplingSpec, tag: str) -> policy_pb2.GenerateResponse:
        metrics.REQUESTS_WAITING.inc()
        async with self.weights.gate.lease() as version:
            metrics.REQUESTS_WAITING.dec()
            self.weights.check_serving()
            return await generate_reply(
                lambda ids, i, p: self._stream_sample(tag, ids, spec, i, p), prompts, spec.n, version
            )

    async def GenerateStream(self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self.weights.check_serving()
        spec, prompts = self._validate(request)
        tap = self.traffic.stream_tap(request, context, prompts)
        with self._admission():
            async for message in self._generate_stream(prompts, spec, request.request_id or "stream"):
                tap.observe(message)
                yield message

    async def _generate_stream(self, prompts: list[list[int]], spec: SamplingSpec, tag: str):
        """Merges the samples' delta streams into one, in arrival order."""
        queue: asyncio.Queue = asyncio.Queue()
        metrics.REQUESTS_WAITING.inc()
        async with self.weights.gate.lease() as version:
            metrics.REQUESTS_WAITING.dec()
            self.weights.check_serving()

            async def pump(p: int, i: int) -> None:
                try:
                    first = i == 0
                    async for delta in self._stream_sample(tag, prompts[p], spec, i, p):
                        message = policy_pb2.GenerateStreamResponse(
                            prompt_index=p,
                            sample_index=i,
                            text_delta=delta.text,
                            token_ids=delta.token_ids,
                            logprobs=delta.logprobs,
                            weight_version=version,
                            finish_reason=FINISH_REASONS.get(delta.finish_reason or "", 0),
                        )
                        if first:
                            message.prompt_token_ids.extend(prompts[p])
                            first = False
                        await queue.put(message)
                finally:
                    await queue.put(None)

            tasks = [asyncio.create_task(pump(p, i)) for p in range(len(prompts)) for i in range(spec.n)]
            try:
                remaining = len(tasks)
                while remaining:
                    item = await queue.get()
                    if item is None:
                        remaining -= 1
                    else:
                        yield item
                for task in tasks:
                    task.result()  # surface engine errors
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    # ---- weights: the manager does the work ------------------------------------

    async def PushWeights(self, request_iterator, context: grpc.aio.ServicerContext):
        return _push_reply(await self.weights.push(request_iterator))

    async def InitWeightTransfer(
        self, request: policy_pb2.InitWeightTransferRequest, context: grpc.aio.ServicerContext
    ):
        self.weights.check_nccl()
        init_info = check_init(request, self.engine.transfer_workers)
        workers = await self.weights.init_nccl(init_info)
        log.info(
            "joined NCCL weight-transfer group %s:%d as ranks %d..%d of %d",
            request.master_address,
            request.master_port,
            request.rank_offset,
            request.rank_offset + workers - 1,
            request.world_size,
        )
        return policy_pb2.InitWeightTransferResponse(workers=workers)

    async def BeginNcclPush(self, request: policy_pb2.BeginNcclPushRequest, context: grpc.aio.ServicerContext):
        ticket = await self.weights.begin_nccl(request)
        return policy_pb2.BeginNcclPushResponse(
            push_id=ticket.push_id, serving_version=ticket.serving_version, reserved_seconds=ticket.reserved_seconds
        )

    async def CommitNcclPush(self, request: policy_pb2.CommitNcclPushRequest, context: grpc.aio.ServicerContext):
        return _push_reply(await self.weights.commit_nccl(request.push_id))

    async def Rollback(self, request: policy_pb2.RollbackRequest, context: grpc.aio.ServicerContext):
        if len(request.reason) > 256:
            raise InvalidArgument(f"reason has {len(request.reason)} characters; at most 256")
        result = await self.weights.rollback(request.version if request.HasField("version") else None, request.reason)
        return policy_pb2.RollbackResponse(
            weight_version=result.version,
            previous_version=result.previous_version,
            num_tensors=result.num_tensors,
            apply_seconds=result.apply_seconds,
        )

    async def GetStatus(self, request: policy_pb2.GetStatusRequest, context: grpc.aio.ServicerContext | None):
        weights, gate = self.weights, self.weights.gate
        nccl = weights.weight_transfer == "nccl"
        return policy_pb2.GetStatusResponse(
            model=self.model_name,
            weight_version=gate.version,
            state=int(weights.state),
            running_requests=len(weights.in_flight),
            max_model_len=self.limits.max_model_len,
            vocab_size=self.limits.vocab_size,
            engine=self.engine.description,
            version_note=gate.version_note,
            version_since_unix=gate.version_since,
            restorable_versions=[version_info(v) for v in weights.history.restorable()],
            highest_version=gate.highest,
            weight_transfer=weights.weight_transfer,
            transfer_workers=self.engine.transfer_workers if nccl else 0,
            current=version_info(weights.current),
            host_id=weights.host_id,
        )


def version_info(version: RetainedVersion) -> policy_pb2.WeightVersionInfo:
    """A history entry as GetStatus reports it: number, note, time and the identity of the push that made it."""
    return policy_pb2.WeightVersionInfo(
        version=version.version,
        note=version.note,
        applied_unix=version.applied_at,
        push_id=version.push_id,
        sha256=version.digest if version.checksum == "sha256" else b"",
        origin=int(version.origin),
        digest=version.digest,
        checksum=checksum_named(version.checksum).wire if version.checksum else 0,
    )


def _push_reply(result: PushResult) -> policy_pb2.PushWeightsResponse:
    return policy_pb2.PushWeightsResponse(
        weight_version=result.version,
        previous_version=result.previous_version,
        num_tensors=result.num_tensors,
        total_bytes=result.total_bytes,
        receive_seconds=result.receive_seconds,
        apply_seconds=result.apply_seconds,
        push_id=result.push_id,
        sha256=result.digest if result.checksum == "sha256" else b"",
        digest=result.digest,
        checksum=checksum_named(result.checksum).wire,
    )
