"""The PolicyService servicer: validate, call the engine adapter, build the reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.weight_stream import PushAssembler, TensorSpec
from services.experience.traffic import TrafficRecorder
from services.policy import metrics
from services.policy.engine import SampleDelta, VllmEngine
from services.policy.nccl_push import Reservation, ReservationSlot, check_init, check_tensors
from services.policy.sampling import Limits, SamplingSpec, check_prompt_count, check_request_id, check_token_ids, parse_sampling
from services.policy.version_gate import VersionGate
from services.policy.weight_history import UnknownVersion, WeightHistory, write_restore_file
from services.policy.weight_staging import SafetensorsFileSink, write_staged

log = logging.getLogger(__name__)

FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORTED,
}


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        engine: VllmEngine,
        tokenizer,
        limits: Limits,
        manifest: dict[str, TensorSpec],
        staging: Path,
        max_push_bytes: int,
        drain_timeout_s: float,
        model_name: str,
        max_concurrent_requests: int = 256,
        fused_groups: tuple[tuple[str, ...], ...] | None = None,
        traffic: TrafficRecorder | None = None,
        history: WeightHistory | None = None,
        weight_transfer: str = "grpc",
        nccl_reserve_timeout_s: float = 120.0,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.limits = limits
        self.manifest = manifest
        self.staging = staging
        self.max_push_bytes = max_push_bytes
        self.drain_timeout_s = drain_timeout_s
        self.model_name = model_name
        self.fused_groups = fused_groups  # set: partial pushes of whole fused units are accepted
        self.traffic = traffic or TrafficRecorder.disabled()  # sample ids; records served samples when a store is set
        self.gate = VersionGate()
        self.history = history  # restorable versions for Rollback; None: rollback unsupported
        self.state = policy_pb2.ENGINE_STATE_STARTING
        self._push_lock = asyncio.Lock()
        self.weight_transfer = weight_transfer  # "nccl": the NCCL control RPCs are served too
        self._nccl_ready = False  # InitWeightTransfer has joined a group
        self._nccl_slot = ReservationSlot(self._push_lock, nccl_reserve_timeout_s)
        self._in_flight: set[str] = set()
        self._admitted = 0
        self.max_concurrent_requests = max_concurrent_requests
        metrics.WEIGHT_VERSION.set(0)
        self._set_state(policy_pb2.ENGINE_STATE_STARTING)

    def _set_state(self, state: int) -> None:
        self.state = state
        metrics.ENGINE_STATE.set(state)

    @contextlib.asynccontextmanager
    async def _swapping(self, what: str, recovery: str, on_failure=lambda: None):
        """Drains in-flight requests, then runs the body (load + version bump) with new requests waiting.

        A failure inside marks the engine FAILED (it may hold a mix of old and new tensors,
        so it refuses to serve) and surfaces as UNAVAILABLE naming `recovery`.
        """
        async with self.gate.swap(self.drain_timeout_s, self._abort_in_flight):
            self._set_state(policy_pb2.ENGINE_STATE_UPDATING_WEIGHTS)
            try:
                yield
            except Exception as exc:
                self._set_state(policy_pb2.ENGINE_STATE_FAILED)
                on_failure()
                log.exception("%s failed; engine marked FAILED", what)
                raise Unavailable(f"{what} failed ({exc}); {recovery}") from exc
            self._set_state(policy_pb2.ENGINE_STATE_SERVING)

    def mark_serving(self) -> None:
        self._set_state(policy_pb2.ENGINE_STATE_SERVING)

    # ---- generation -------------------------------------------------------

    def _check_serving(self) -> None:
        if self.state == policy_pb2.ENGINE_STATE_STARTING:
            raise Unavailable("the engine is still starting; retry when health reports SERVING")
        if self.state == policy_pb2.ENGINE_STATE_FAILED:
            raise Unavailable("a weight load failed midway; refusing to serve a half-updated model until a push succeeds")

    def _check_started(self) -> None:
        """Weights can change only once the engine exists (a push during start-up would mark it FAILED)."""
        if self.state == policy_pb2.ENGINE_STATE_STARTING:
            raise Unavailable("the engine is still starting; retry when health reports SERVING")

    def _prompt_ids(self, request: policy_pb2.GenerateRequest, spec: SamplingSpec) -> list[list[int]]:
        check_prompt_count(len(request.prompts), self.limits)
        prompts = []
        for index, prompt in enumerate(request.prompts):
            has_text, has_ids = bool(prompt.text), len(prompt.token_ids) > 0
            if has_text == has_ids:
                raise InvalidArgument(f"prompts[{index}]: give exactly one of text or token_ids")
            if has_ids:
                ids = list(prompt.token_ids)
            elif prompt.apply_chat_template:
                ids = _as_list(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=True
                ))
            else:
                ids = self.tokenizer.encode(prompt.text, add_special_tokens=False)
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
        self, tag: str, prompt_ids: list[int], spec: SamplingSpec, sample_index: int
    ) -> AsyncIterator[SampleDelta]:
        engine_id = f"{tag}-{uuid.uuid4().hex[:12]}"
        arrival = time.perf_counter()
        first_at = last_at = None
        generated = 0
        self._in_flight.add(engine_id)
        metrics.REQUESTS_RUNNING.inc()
        metrics.PROMPT_TOKENS.inc(len(prompt_ids))
        try:
            async for delta in self.engine.generate(engine_id, prompt_ids, spec, sample_index):
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
            self._in_flight.discard(engine_id)

    async def _collect_sample(self, tag: str, prompt_ids: list[int], spec: SamplingSpec, index: int, version: int):
        sample = policy_pb2.Sample(index=index, weight_version=version)
        text = []
        async for delta in self._stream_sample(tag, prompt_ids, spec, index):
            sample.token_ids.extend(delta.token_ids)
            sample.logprobs.extend(delta.logprobs)
            text.append(delta.text)
            if delta.finish_reason is not None:
                sample.finish_reason = FINISH_REASONS.get(delta.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED)
        sample.text = "".join(text)
        return sample

    async def Generate(self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self._check_serving()
        spec, prompts = self._validate(request)
        with self._admission():
            response = await self._generate(prompts, spec, request.request_id or "gen")
        self.traffic.finish_generate(request, context, response)
        return response

    async def _generate(self, prompts: list[list[int]], spec: SamplingSpec, tag: str) -> policy_pb2.GenerateResponse:
        metrics.REQUESTS_WAITING.inc()
        async with self.gate.lease() as version:
            metrics.REQUESTS_WAITING.dec()
            self._check_serving()
            jobs = [
                [self._collect_sample(tag, ids, spec, i, version) for i in range(spec.n)] for ids in prompts
            ]
            samples = await asyncio.gather(*[job for group in jobs for job in group])
        response = policy_pb2.GenerateResponse()
        for p, ids in enumerate(prompts):
            result = response.results.add(prompt_token_ids=ids)
            result.samples.extend(samples[p * spec.n : (p + 1) * spec.n])
        return response

    async def GenerateStream(self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        self._check_serving()
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
        async with self.gate.lease() as version:
            metrics.REQUESTS_WAITING.dec()
            self._check_serving()

            async def pump(p: int, i: int) -> None:
                try:
                    first = i == 0
                    async for delta in self._stream_sample(tag, prompts[p], spec, i):
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

    # ---- weights ----------------------------------------------------------

    async def PushWeights(self, request_iterator, context: grpc.aio.ServicerContext):
        self._check_started()
        started = time.perf_counter()
        sink = SafetensorsFileSink(self.staging, self.manifest)  # bytes go straight to the staging file
        assembler = PushAssembler(self.manifest, self.max_push_bytes, fused_groups=self.fused_groups, sink=sink)
        requested_version = None
        try:
            async for request in request_iterator:
                assembler.feed(request)
                if request.HasField("begin") and request.begin.HasField("version"):
                    requested_version = request.begin.version
            staged = assembler.finish()
        except BaseException as exc:  # rejected, cut off or cancelled: nothing of it stays
            assembler.discard()
            if isinstance(exc, Exception):
                metrics.PUSHES.labels("rejected").inc()
            raise
        received = time.perf_counter() - started
        metrics.PUSH_SECONDS.labels("receive").observe(received)
        async with self._push_lock:
            current = self.gate.version
            try:
                self._check_version_guards(staged.expected_version, requested_version)
            except Exception:
                assembler.discard()
                raise
            path = await asyncio.get_running_loop().run_in_executor(None, write_staged, staged, self.staging)
            apply_started = time.perf_counter()
            retained = False
            try:
                async with self._swapping("loading the pushed weights", "push again to recover",
                                          metrics.PUSHES.labels("failed").inc):
                    await self.engine.load_weights(str(path))
                    version = self.gate.advance(staged.note, requested_version)
                if self.history is not None:
                    retained = True
                    _remove(self.history.record_push(version, staged.note, path, list(staged.names)))
            finally:
                if not retained:
                    path.unlink(missing_ok=True)
        applied = time.perf_counter() - apply_started
        metrics.PUSH_SECONDS.labels("apply").observe(applied)
        metrics.PUSH_BYTES.inc(staged.total_bytes)
        metrics.PUSHES.labels("applied").inc()
        metrics.WEIGHT_VERSION.set(version)
        log.info(
            "weights applied version=%d tensors=%d bytes=%d receive_s=%.2f apply_s=%.2f note=%r",
            version, len(staged.names), staged.total_bytes, received, applied, staged.note,
        )
        return policy_pb2.PushWeightsResponse(
            weight_version=version,
            previous_version=current,
            num_tensors=len(staged.names),
            total_bytes=staged.total_bytes,
            receive_seconds=received,
            apply_seconds=applied,
        )

    def _check_version_guards(self, expected_version: int | None, requested_version: int | None) -> None:
        """The push's PushBegin guards against the version serving now; call with the push lock held."""
        current = self.gate.version
        if expected_version is not None and expected_version != current:
            metrics.PUSHES.labels("rejected").inc()
            raise FailedPrecondition(f"push expected version {expected_version} but {current} is serving; nothing was applied")
        if requested_version is not None and requested_version <= self.gate.highest:
            metrics.PUSHES.labels("rejected").inc()
            raise FailedPrecondition(
                f"push asks to serve as version {requested_version}, but this server has applied up to "
                f"{self.gate.highest} and never reuses a number; nothing was applied"
            )

    # ---- weights over NCCL (weight_transfer=nccl) ------------------------------

    def _check_nccl(self) -> None:
        if self.weight_transfer != "nccl":
            raise FailedPrecondition(
                "this policy server takes weights over gRPC only (weight_transfer=grpc); use PushWeights, "
                "or restart it with --weight-transfer=nccl on a GPU"
            )
        self._check_started()

    async def InitWeightTransfer(self, request: policy_pb2.InitWeightTransferRequest, context: grpc.aio.ServicerContext):
        self._check_nccl()
        workers = self.engine.transfer_workers
        init_info = check_init(request, workers)
        async with self._push_lock:  # no push may use the group while it is being (re)built
            self._nccl_ready = False
            try:
                await self.engine.init_weight_transfer(init_info)
            except Exception as exc:
                log.exception("joining the NCCL weight-transfer group failed")
                raise Unavailable(f"joining the NCCL group at {request.master_address}:{request.master_port} failed ({exc})") from exc
            self._nccl_ready = True
        log.info("joined NCCL weight-transfer group %s:%d as ranks %d..%d of %d",
                 request.master_address, request.master_port, request.rank_offset,
                 request.rank_offset + workers - 1, request.world_size)
        return policy_pb2.InitWeightTransferResponse(workers=workers)

    async def BeginNcclPush(self, request: policy_pb2.BeginNcclPushRequest, context: grpc.aio.ServicerContext):
        self._check_nccl()
        try:
            update_info = check_tensors(request, self.manifest, self.max_push_bytes, self.fused_groups)
        except Exception:
            metrics.PUSHES.labels("rejected").inc()
            raise
        begin = request.begin
        await self._push_lock.acquire()
        try:
            if not self._nccl_ready:
                raise FailedPrecondition("no NCCL weight-transfer group yet: call InitWeightTransfer first")
            expected = begin.expected_version if begin.HasField("expected_version") else None
            requested = begin.version if begin.HasField("version") else None
            self._check_version_guards(expected, requested)
            reservation = Reservation(update_info, begin.note, expected, requested, int(begin.total_bytes))
            self._nccl_slot.hold(reservation)
        except BaseException:
            self._push_lock.release()
            raise
        return policy_pb2.BeginNcclPushResponse(
            push_id=reservation.push_id, serving_version=self.gate.version, reserved_seconds=self._nccl_slot.timeout_s
        )

    async def CommitNcclPush(self, request: policy_pb2.CommitNcclPushRequest, context: grpc.aio.ServicerContext):
        reservation = self._nccl_slot.take(request.push_id)
        # Shielded: a trainer that hangs up mid-receive must not cut the swap's bookkeeping short
        # while the workers are still loading; the slot is released when the commit really ends.
        return await asyncio.shield(asyncio.ensure_future(self._commit_and_release(reservation)))

    async def _commit_and_release(self, reservation: Reservation) -> policy_pb2.PushWeightsResponse:
        try:
            return await self._commit_nccl(reservation)
        finally:
            self._nccl_slot.release(reservation.push_id)

    async def _commit_nccl(self, reservation: Reservation) -> policy_pb2.PushWeightsResponse:
        """Same swap as PushWeights, with vLLM's NCCL receive as the load; runs holding the push lock."""
        current = self.gate.version
        started = time.perf_counter()
        def broken() -> None:
            self._nccl_ready = False  # a broken broadcast leaves the group unusable: InitWeightTransfer again
            metrics.PUSHES.labels("failed").inc()

        async with self._swapping("receiving the weights over NCCL",
                                  "call InitWeightTransfer and push again, or roll back", broken):
            count = await self.engine.receive_weights(reservation.update_info)
            version = self.gate.advance(reservation.note, reservation.requested_version)
        if self.history is not None:
            _remove(self.history.record_unretained(version, reservation.note))
        applied = time.perf_counter() - started
        metrics.PUSH_SECONDS.labels("apply").observe(applied)
        metrics.PUSH_BYTES.inc(reservation.total_bytes)
        metrics.PUSHES.labels("applied").inc()
        metrics.WEIGHT_VERSION.set(version)
        log.info("weights applied over NCCL version=%d tensors=%d bytes=%d apply_s=%.2f note=%r",
                 version, count, reservation.total_bytes, applied, reservation.note)
        return policy_pb2.PushWeightsResponse(
            weight_version=version,
            previous_version=current,
            num_tensors=count,
            total_bytes=reservation.total_bytes,
            receive_seconds=0.0,
            apply_seconds=applied,
        )

    async def _abort_in_flight(self) -> None:
        ids = sorted(self._in_flight)
        log.warning("drain timeout (%.1f s): aborting %d in-flight samples for the weight swap", self.drain_timeout_s, len(ids))
        await self.engine.abort(ids)

    async def Rollback(self, request: policy_pb2.RollbackRequest, context: grpc.aio.ServicerContext):
        if len(request.reason) > 256:
            raise InvalidArgument(f"reason has {len(request.reason)} characters; at most 256")
        self._check_started()
        if self.history is None or (self.history.keep == 0 and not request.HasField("version")):
            raise FailedPrecondition("this server keeps no earlier versions (keep_versions=0); push the weights instead")
        started = time.perf_counter()
        async with self._push_lock:
            current = self.gate.version
            failed = self.state == policy_pb2.ENGINE_STATE_FAILED
            target = request.version if request.HasField("version") else self.history.previous()
            if target is None:
                raise FailedPrecondition(f"no version before {current} is retained; nothing to roll back to")
            try:  # after a failed load the engine holds a mix: reload every tensor of the target
                plan = self.history.plan_restore(target, full=failed)
            except UnknownVersion:
                kept = [v.version for v in self.history.restorable()]
                raise NotFound(
                    f"version {target} is not restorable here; restorable: {kept} plus the current {current} "
                    f"(keep_versions={self.history.keep})"
                ) from None
            if not plan and not failed:
                return policy_pb2.RollbackResponse(weight_version=current, previous_version=current)
            path = await asyncio.get_running_loop().run_in_executor(None, write_restore_file, plan, self.staging)
            try:
                async with self._swapping(f"loading version {target}", "roll back or push again to recover"):
                    await self.engine.load_weights(str(path))
                    self.gate.restore(target, request.reason or f"rollback from {current}")
                _remove(self.history.record_restore(target))
            finally:
                path.unlink(missing_ok=True)
        applied = time.perf_counter() - started
        metrics.WEIGHT_VERSION.set(target)
        log.warning("rolled back version=%d previous=%d tensors=%d apply_s=%.2f reason=%r",
                    target, current, len(plan), applied, request.reason)
        return policy_pb2.RollbackResponse(
            weight_version=target, previous_version=current, num_tensors=len(plan), apply_seconds=applied
        )

    async def GetStatus(self, request: policy_pb2.GetStatusRequest, context: grpc.aio.ServicerContext):
        return policy_pb2.GetStatusResponse(
            model=self.model_name,
            weight_version=self.gate.version,
            state=self.state,
            running_requests=len(self._in_flight),
            max_model_len=self.limits.max_model_len,
            vocab_size=self.limits.vocab_size,
            engine=self.engine.description,
            version_note=self.gate.version_note,
            version_since_unix=self.gate.version_since,
            restorable_versions=[
                policy_pb2.WeightVersionInfo(version=v.version, note=v.note, applied_unix=v.applied_at)
                for v in (self.history.restorable() if self.history is not None else [])
            ],
            highest_version=self.gate.highest,
            weight_transfer=self.weight_transfer,
            transfer_workers=self.engine.transfer_workers if self.weight_transfer == "nccl" else 0,
        )


def _remove(paths: list[Path]) -> None:
    """Deletes staged files no retained version needs any more."""
    for path in paths:
        path.unlink(missing_ok=True)


def _as_list(encoded) -> list[int]:
    """apply_chat_template returns a list or a BatchEncoding depending on the transformers version."""
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])
