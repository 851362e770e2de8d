"""The policy's weight lifecycle, without gRPC: what serves, how it changes, and what happens when a change fails.

`WeightManager` owns the engine's state (STARTING, SERVING, UPDATING_WEIGHTS,
FAILED), the version gate that makes a swap atomic with respect to requests,
the staging of streamed pushes, NCCL reservations and commits, rollbacks and
the version history. The servicer validates requests, calls it and builds
replies; the manager raises `ServiceError`s that the interceptor maps to
statuses. So the lifecycle is tested without a server (tests/unit/test_weight_manager.py).

Every change to the weights runs under one push lock, then inside the gate's
swap: in-flight requests drain (stragglers are aborted after drain_timeout_s),
the engine loads, and the version moves. A load that fails midway leaves the
engine FAILED: it may hold a mix of old and new tensors, so it refuses to serve
until a push of every tensor or a rollback (which reloads every tensor) succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rlhf.v1 import policy_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.shared_segment import STREAM_INSTEAD, host_id, take_segment
from services.common.weight_stream import (
    PushAssembler,
    PushHeader,
    StagedPush,
    TensorSpec,
    committed_digest,
    parse_begin,
)
from services.policy import metrics
from services.policy.nccl_push import NcclDeclaration, Reservation, ReservationSlot, check_tensors
from services.policy.version_gate import VersionGate
from services.policy.weight_history import RetainedVersion, UnknownVersion, WeightHistory, write_restore_file
from services.policy.weight_staging import SafetensorsFileSink, prepare_spare, write_staged

log = logging.getLogger(__name__)


class EngineState(enum.IntEnum):
    """What the engine is doing (the values of rlhf.v1.EngineState)."""

    STARTING = 1
    SERVING = 2
    UPDATING_WEIGHTS = 3
    FAILED = 4


class WeightEngine(Protocol):
    """The engine adapter's weight surface (VllmEngine; a fake in unit tests)."""

    transfer_workers: int

    async def load_weights(self, staged_file: str) -> int: ...
    async def init_weight_transfer(self, init_info: dict) -> None: ...
    async def receive_weights(self, update_info: dict) -> int: ...
    async def abort(self, request_ids: list[str]) -> None: ...


@dataclass(frozen=True)
class PushResult:
    """An applied push (streamed or NCCL)."""

    version: int
    previous_version: int
    num_tensors: int
    total_bytes: int
    receive_seconds: float  # 0 for NCCL: its receive is the load
    apply_seconds: float
    push_id: str
    digest: bytes
    checksum: str  # algorithm of `digest` ("xxh3_128", "sha256")


@dataclass(frozen=True)
class RollbackResult:
    version: int
    previous_version: int
    num_tensors: int  # tensors reloaded (0 for a no-op)
    apply_seconds: float


@dataclass(frozen=True)
class NcclTicket:
    """A held NCCL reservation: what BeginNcclPush answers."""

    push_id: str
    serving_version: int
    reserved_seconds: float


class WeightManager:
    """Owns the served weights: staging, the swap under the version gate, pushes, rollback, history, engine state."""

    def __init__(
        self,
        engine: WeightEngine,
        manifest: Mapping[str, TensorSpec],
        staging: Path,
        max_push_bytes: int,
        drain_timeout_s: float,
        fused_groups: tuple[tuple[str, ...], ...] | None = None,
        history: WeightHistory | None = None,
        weight_transfer: str = "grpc",
        nccl_reserve_timeout_s: float = 120.0,
        same_host: bool = True,
    ) -> None:
        self.engine = engine
        self.manifest = manifest
        self.staging = staging
        self.max_push_bytes = max_push_bytes
        self.drain_timeout_s = drain_timeout_s
        self.fused_groups = fused_groups  # set: partial pushes of whole fused units are accepted
        self.history = history if history is not None else WeightHistory({}, keep=0)
        self.weight_transfer = weight_transfer  # "nccl": the NCCL control calls are served too
        self.host_id = host_id() if same_host else ""  # "": same-host (shared-memory) pushes are refused
        self.gate = VersionGate()
        self.in_flight: set[str] = set()  # engine request ids generating now; a swap drains (or aborts) them
        self._lock = asyncio.Lock()  # one weight change at a time (an NCCL reservation holds it until commit)
        self._nccl_ready = False  # init_nccl has joined a group
        self._nccl_slot = ReservationSlot(self._lock, nccl_reserve_timeout_s)
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix="push-receive")  # hashing + staging writes
        self._spare: Path | None = None  # a staged file no version needs: the next push overwrites its touched pages
        self._preparing: Future[Path] | None = None  # a spare being written ahead on the receive thread
        self._freeing: set[asyncio.Future] = set()  # background deletions of retired files
        self.state = EngineState.STARTING
        metrics.WEIGHT_VERSION.set(0)
        self._set_state(EngineState.STARTING)

    # ---- state ---------------------------------------------------------------

    def _set_state(self, state: EngineState) -> None:
        self.state = state
        metrics.ENGINE_STATE.set(int(state))

    def mark_serving(self) -> None:
        """The engine has started: requests and weight changes are accepted from now on."""
        self._set_state(EngineState.SERVING)

    @property
    def push_lock(self) -> asyncio.Lock:
        """Held while weights change (and by a reserved NCCL push until it commits or expires)."""
        return self._lock

    @property
    def current(self) -> RetainedVersion:
        """The version serving now with its identity (push id, digest, origin)."""
        return self.history.current

    def check_serving(self) -> None:
        if self.state == EngineState.STARTING:
            raise Unavailable("the engine is still starting; retry when health reports SERVING")
        if self.state == EngineState.FAILED:
            raise Unavailable(
                "a weight load failed midway; refusing to serve a half-updated model until a complete push "
                "or a rollback succeeds"
            )

    def check_started(self) -> None:
        """Weights can change only once the engine exists (a push during start-up would mark it FAILED)."""
        if self.state == EngineState.STARTING:
            raise Unavailable("the engine is still starting; retry when health reports SERVING")

    def _check_guards(self, header: PushHeader, names: tuple[str, ...] | list[str]) -> None:
        """What may refuse a verified push at commit; call with the push lock held."""
        current = self.gate.version
        if header.expected_version is not None and header.expected_version != current:
            metrics.PUSHES.labels("rejected").inc()
            raise FailedPrecondition(
                f"push expected version {header.expected_version} but {current} is serving; nothing was applied"
            )
        if header.version is not None and header.version <= self.gate.highest:
            metrics.PUSHES.labels("rejected").inc()
            raise FailedPrecondition(
                f"push asks to serve as version {header.version}, but this server has applied up to "
                f"{self.gate.highest} and never reuses a number; nothing was applied"
            )
        if self.state == EngineState.FAILED and set(names) != set(self.manifest):
            metrics.PUSHES.labels("rejected").inc()
            raise FailedPrecondition(
                f"the engine is FAILED after a failed weight load, and a partial push ({len(set(names))} of "
                f"{len(self.manifest)} tensors) cannot repair it; push every tensor or roll back; nothing was applied"
            )

    @contextlib.asynccontextmanager
    async def _swapping(self, what: str, recovery: str, on_failure: Callable[[], None] = lambda: None):
        """Drains in-flight requests, then runs the body (load + version bump) with new requests waiting.

        A failure inside marks the engine FAILED (it may hold a mix of old and new tensors,
        so it refuses to serve) and surfaces as UNAVAILABLE naming `recovery`.
        """
        async with self.gate.swap(self.drain_timeout_s, self._abort_in_flight):
            self._set_state(EngineState.UPDATING_WEIGHTS)
            try:
                yield
            except Exception as exc:
                self._set_state(EngineState.FAILED)
                on_failure()
                log.exception("%s failed; engine marked FAILED", what)
                raise Unavailable(f"{what} failed ({exc}); {recovery}") from exc
            self._set_state(EngineState.SERVING)

    async def _abort_in_flight(self) -> None:
        ids = sorted(self.in_flight)
        log.warning(
            "drain timeout (%.1f s): aborting %d in-flight samples for the weight swap", self.drain_timeout_s, len(ids)
        )
        await self.engine.abort(ids)

    # ---- streamed pushes -------------------------------------------------------

    async def push(self, requests: AsyncIterable[policy_pb2.PushWeightsRequest]) -> PushResult:
        """Receives a push (streamed, or same-host from a shared-memory segment) into a staging file, then swaps it in;
        nothing changes unless all of it applies."""
        self.check_started()
        started = time.perf_counter()
        stream = aiter(requests)
        first = await anext(stream, None)
        same_host = first is not None and first.WhichOneof("item") == "begin" and first.begin.HasField("segment")
        if same_host:
            staged = await self._take_segment(first.begin, stream)
        else:
            staged = await self._receive_stream(first, stream)
        received = time.perf_counter() - started
        metrics.PUSH_SECONDS.labels("receive").observe(received)
        header = staged.header
        async with self._lock:
            current = self.gate.version
            try:
                self._check_guards(header, staged.names)
            except Exception:
                await _remove([staged.path] if staged.path is not None else [])
                raise
            path = await asyncio.get_running_loop().run_in_executor(None, write_staged, staged, self.staging)
            apply_started = time.perf_counter()
            retained = False
            try:
                async with self._swapping(
                    "loading the pushed weights",
                    "push again (every tensor) to recover",
                    metrics.PUSHES.labels("failed").inc,
                ):
                    await self.engine.load_weights(str(path))
                    version = self.gate.advance(header.note, header.version)
                retained = True
                self._retire(
                    self.history.record_push(
                        version,
                        header.note,
                        path,
                        list(staged.names),
                        header.push_id,
                        staged.digest,
                        header.checksum.name,
                    )
                )
            finally:
                if not retained:
                    self._retire([path])
            if retained and not same_host:  # a same-host sender writes ahead its own next segment
                self._prepare_spare(_size(path))
        applied = time.perf_counter() - apply_started
        metrics.PUSH_SECONDS.labels("apply").observe(applied)
        metrics.PUSH_BYTES.inc(staged.total_bytes)
        metrics.PUSHES.labels("applied").inc()
        metrics.WEIGHT_VERSION.set(version)
        log.info(
            "weights applied version=%d tensors=%d bytes=%d receive_s=%.2f apply_s=%.2f push_id=%s note=%r",
            version,
            len(staged.names),
            staged.total_bytes,
            received,
            applied,
            header.push_id or "-",
            header.note,
        )
        return PushResult(
            version,
            current,
            len(staged.names),
            staged.total_bytes,
            received,
            applied,
            header.push_id,
            staged.digest,
            header.checksum.name,
        )

    async def _receive_stream(
        self, first: policy_pb2.PushWeightsRequest | None, stream: AsyncIterator[policy_pb2.PushWeightsRequest]
    ) -> StagedPush:
        """Assembles a streamed push into a staging file on the receive thread; a failed one leaves nothing behind."""
        loop = asyncio.get_running_loop()
        # Hashing and file writes run on the receive thread, never on the event loop, so generation keeps
        # flowing while bytes arrive; one thread keeps each push's messages in order.
        spare = await self._take_spare()
        sink = await loop.run_in_executor(self._receiver, SafetensorsFileSink, self.staging, dict(self.manifest), spare)
        assembler = PushAssembler(self.manifest, self.max_push_bytes, fused_groups=self.fused_groups, sink=sink)
        try:
            if first is not None:
                await loop.run_in_executor(self._receiver, assembler.feed, first)
            async for request in stream:
                await loop.run_in_executor(self._receiver, assembler.feed, request)
            return await loop.run_in_executor(self._receiver, assembler.finish)
        except BaseException as exc:  # rejected, cut off or cancelled: nothing of it stays
            discarded = self._receiver.submit(assembler.discard)  # queued behind a feed that may still be running
            if isinstance(exc, Exception):
                metrics.PUSHES.labels("rejected").inc()
                await asyncio.wrap_future(discarded)
            raise

    async def _take_segment(
        self, begin: policy_pb2.PushBegin, stream: AsyncIterator[policy_pb2.PushWeightsRequest]
    ) -> StagedPush:
        """A same-host push: `begin` names a shared-memory segment, `commit` its checksum; the segment is moved into
        staging, the spare handed back to the sender, and verified on the receive thread
        (see services/common/shared_segment.py)."""
        try:
            if not self.host_id:
                raise FailedPrecondition(
                    f"this server does not take same-host pushes (same_host_pushes is off); {STREAM_INSTEAD}"
                )
            header = parse_begin(begin, self.max_push_bytes)
            commit = await anext(stream, None)
            if commit is None or commit.WhichOneof("item") != "commit":
                raise InvalidArgument("a shared-memory push is `begin` (with segment) then `commit`, nothing else")
            if await anext(stream, None) is not None:
                raise InvalidArgument("push has messages after commit")
            digest = committed_digest(commit.commit, header.checksum)
            spare = await self._take_spare()
            taking = asyncio.get_running_loop().run_in_executor(
                self._receiver,
                take_segment,
                begin.segment,
                header,
                digest,
                self.manifest,
                self.staging,
                self.fused_groups,
                spare,
            )
            try:
                return await taking
            except Exception:
                if spare is not None and spare.exists():  # refused before it was handed back: still ours
                    self._retire([spare])
                raise
        except Exception:
            metrics.PUSHES.labels("rejected").inc()
            raise

    def _retire(self, paths: list[Path]) -> None:
        """Frees staged files no version needs, keeping the largest push file as the next push's pre-faulted
        staging area (a small partial push's file would leave a full push to fresh pages). The files are
        deleted in the background: freeing a model's tmpfs pages takes about 0.1 s per 538 MB here, which the
        push's reply need not wait for."""
        candidates = [p for p in paths if p.parent == self.staging and p.name.startswith("push-")]
        if self._spare is not None:
            candidates.append(self._spare)
        sizes = {path: _size(path) for path in candidates}
        keep = max(sizes, key=sizes.__getitem__, default=None)
        if keep is not None and sizes[keep] < 0:
            keep = None
        dropped = [p for p in [*paths, self._spare] if p is not None and p != keep]
        self._spare = keep
        if dropped:
            freeing = asyncio.get_running_loop().run_in_executor(None, _unlink, dropped)
            self._freeing.add(freeing)
            freeing.add_done_callback(self._freeing.discard)

    def _prepare_spare(self, size: int) -> None:
        """Writes the next push's staging file ahead on the receive thread, when no retired file can serve.

        Queued on the receive thread, so the next push's receive starts behind it and finds it done; meanwhile
        generation runs (the writes never touch the event loop).
        """
        if self._spare is None and self._preparing is None and size > 0:
            self._preparing = self._receiver.submit(prepare_spare, self.staging, size)

    async def _take_spare(self) -> Path | None:
        """The file the next push overwrites: a retired one, or the one written ahead (None: fresh pages)."""
        spare, self._spare = self._spare, None
        preparing, self._preparing = self._preparing, None
        if preparing is None:
            return spare
        try:
            prepared = await asyncio.wrap_future(preparing)
        except OSError as exc:  # a full tmpfs, say: the push writes a new file instead
            log.warning("writing the next staging file ahead failed (%s); this push writes a new one", exc)
            return spare
        if spare is None:
            return prepared
        self._retire([prepared])  # both exist: the larger waits as the next spare
        return spare

    async def prepared(self) -> Path | None:
        """Waits for a staging file being written ahead; its path (None when none is)."""
        if self._preparing is None:
            return None
        return await asyncio.wrap_future(self._preparing)

    async def freed(self) -> None:
        """Returns once the retired staging files deleted in the background are gone."""
        if self._freeing:
            await asyncio.gather(*self._freeing)

    # ---- NCCL pushes (weight_transfer=nccl) ---------------------------------------

    def check_nccl(self) -> None:
        if self.weight_transfer != "nccl":
            raise FailedPrecondition(
                "this policy server takes weights over gRPC only (weight_transfer=grpc); use PushWeights, "
                "or restart it with --weight-transfer=nccl on a GPU"
            )
        self.check_started()

    async def init_nccl(self, init_info: dict) -> int:
        """Joins the engine's workers to the trainer's NCCL group (a checked init_info); returns the workers."""
        self.check_nccl()
        async with self._lock:  # no push may use the group while it is being (re)built
            self._nccl_ready = False
            try:
                await self.engine.init_weight_transfer(init_info)
            except Exception as exc:
                log.exception("joining the NCCL weight-transfer group failed")
                raise Unavailable(
                    f"joining the NCCL group at {init_info['master_address']}:{init_info['master_port']} failed ({exc})"
                ) from exc
            self._nccl_ready = True
        return self.engine.transfer_workers

    async def begin_nccl(self, request: policy_pb2.BeginNcclPushRequest) -> NcclTicket:
        """Checks an NCCL push's declaration and guards, then holds the push lock for it until commit or expiry."""
        self.check_nccl()
        try:
            declaration = check_tensors(request, self.manifest, self.max_push_bytes, self.fused_groups)
        except Exception:
            metrics.PUSHES.labels("rejected").inc()
            raise
        await self._lock.acquire()
        try:
            if not self._nccl_ready:
                raise FailedPrecondition("no NCCL weight-transfer group yet: call InitWeightTransfer first")
            self._check_guards(declaration.header, declaration.update_info["names"])
            reservation = Reservation(declaration)
            if declaration.header.push_id:
                reservation.push_id = declaration.header.push_id
            self._nccl_slot.hold(reservation)
        except BaseException:
            self._lock.release()
            raise
        return NcclTicket(reservation.push_id, self.gate.version, self._nccl_slot.timeout_s)

    async def commit_nccl(self, push_id: str) -> PushResult:
        """Receives the reserved push over NCCL and swaps it in; the slot is released when the commit really ends."""
        reservation = self._nccl_slot.take(push_id)
        # Shielded: a trainer that hangs up mid-receive must not cut the swap's bookkeeping short
        # while the workers are still loading.
        return await asyncio.shield(asyncio.ensure_future(self._commit_and_release(reservation)))

    async def _commit_and_release(self, reservation: Reservation) -> PushResult:
        try:
            return await self._commit_nccl(reservation.declaration)
        finally:
            self._nccl_slot.release(reservation.push_id)

    async def _commit_nccl(self, declaration: NcclDeclaration) -> PushResult:
        """Same swap as a streamed push, with vLLM's NCCL receive as the load; runs holding the push lock."""
        header = declaration.header
        current = self.gate.version
        started = time.perf_counter()

        def broken() -> None:
            self._nccl_ready = False  # a broken broadcast leaves the group unusable: InitWeightTransfer again
            metrics.PUSHES.labels("failed").inc()

        async with self._swapping(
            "receiving the weights over NCCL",
            "call InitWeightTransfer and push again (every tensor), or roll back",
            broken,
        ):
            count = await self.engine.receive_weights(declaration.update_info)
            version = self.gate.advance(header.note, header.version)
        await _remove(self.history.record_unretained(version, header.note, header.push_id, declaration.sha256))
        applied = time.perf_counter() - started
        metrics.PUSH_SECONDS.labels("apply").observe(applied)
        metrics.PUSH_BYTES.inc(header.total_bytes)
        metrics.PUSHES.labels("applied").inc()
        metrics.WEIGHT_VERSION.set(version)
        log.info(
            "weights applied over NCCL version=%d tensors=%d bytes=%d apply_s=%.2f push_id=%s note=%r",
            version,
            count,
            header.total_bytes,
            applied,
            header.push_id or "-",
            header.note,
        )
        return PushResult(
            version, current, count, header.total_bytes, 0.0, applied, header.push_id, declaration.sha256, "sha256"
        )

    # ---- rollback -------------------------------------------------------------

    async def rollback(self, version: int | None, reason: str) -> RollbackResult:
        """Serves a retained version again under its own number (default: the one before the current one)."""
        self.check_started()
        history = self.history
        if history.keep == 0 and version is None:
            raise FailedPrecondition(
                "this server keeps no earlier versions (keep_versions=0); push the weights instead"
            )
        started = time.perf_counter()
        async with self._lock:
            current = self.gate.version
            failed = self.state == EngineState.FAILED
            target = version if version is not None else history.previous()
            if target is None:
                raise FailedPrecondition(f"no version before {current} is retained; nothing to roll back to")
            try:  # after a failed load the engine holds a mix: reload every tensor of the target
                plan = history.plan_restore(target, full=failed)
            except UnknownVersion:
                kept = [v.version for v in history.restorable()]
                raise NotFound(
                    f"version {target} is not restorable here; restorable: {kept} plus the current {current} "
                    f"(keep_versions={history.keep})"
                ) from None
            if not plan and not failed:
                return RollbackResult(current, current, 0, 0.0)
            path = await asyncio.get_running_loop().run_in_executor(None, write_restore_file, plan, self.staging)
            try:
                async with self._swapping(
                    f"loading version {target}", "roll back or push again (every tensor) to recover"
                ):
                    await self.engine.load_weights(str(path))
                    self.gate.restore(target, reason or f"rollback from {current}")
                await _remove(history.record_restore(target))
            finally:
                await _remove([path])
        applied = time.perf_counter() - started
        metrics.WEIGHT_VERSION.set(target)
        log.warning(
            "rolled back version=%d previous=%d tensors=%d apply_s=%.2f reason=%r",
            target,
            current,
            len(plan),
            applied,
            reason,
        )
        return RollbackResult(target, current, len(plan), applied)


async def _remove(paths: list[Path]) -> None:
    """Deletes staged files no retained version needs any more (off the event loop: freeing a large tmpfs file takes
    a while)."""
    if paths:
        await asyncio.get_running_loop().run_in_executor(None, _unlink, paths)


def _size(path: Path) -> int:
    """A staged file's size; -1 when it is gone."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
