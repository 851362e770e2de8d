"""The policy service's client: the one way the trainer, the online loop, the load tester and the tests call it.

The policy may run as several replicas (comma-separated addresses, or
`dns:///name:port` for every address a name resolves to). Generation is split over
every policy replica in rotation, and each new weight version goes to all of them
in parallel under one explicit version number, so a sample's `weight_version` names
the same weights whichever replica made it. A replica that misses a push (down,
restarted, timed out) leaves the rotation and is brought back with a full push of
the current weights; one that someone else pushed to or rolled back is left out
(never overwritten).

Every push carries a push id chosen here (`<writer>-v<version>-<random>`), which the
server records with the version and reports in `GetStatus.current`. Whether a push
landed, and whether a replica serves weights this client made, is decided from that
identity, never from the version number alone: another writer's push may take a
number first, and a rollback lowers `weight_version` to a number this client used.

`PolicyReplica` is one server (blocking calls with retries); `PolicyClient` keeps a set of
them at one weight version; `PolicyCaller` is the asyncio face the load tester times calls with.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.clients import metrics
from services.clients.replica_pool import ReplicaPool, ReplicasUnavailable, split_addresses, with_retries
from services.clients.timing import RequestResult, failure
from services.common.client import open_channel
from services.common.shared_segment import STREAM_INSTEAD, SegmentWriter, host_id, segment_requests
from services.common.weight_stream import push_requests

log = logging.getLogger(__name__)

__all__ = ["PolicyCaller", "PolicyClient", "PolicyReplica", "ReplicasUnavailable", "with_retries"]

PROBE_TIMEOUT_S = 5.0
FullWeights = Callable[[], Iterable[tuple[str, torch.Tensor]]]


def new_writer_id() -> str:
    """Names one pusher (a trainer's client, an online loop's replica) in the push ids it sends."""
    return uuid.uuid4().hex[:12]


class PolicyReplica:
    """One policy server: generation, status, and the admin calls a push or rollout needs."""

    def __init__(
        self,
        name: str,
        address: str,
        timeout_s: float = 300.0,
        retries: int = 3,
        writer: str | None = None,
        shared_memory: bool = True,
    ) -> None:
        self.name, self.address = name, address
        self.writer = writer or new_writer_id()  # prefix of every push id this client sends
        self.channel = open_channel(address)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries
        self.in_rotation, self.reason = True, ""
        self.version: int | None = None  # the version this replica is known to serve
        self.highest = 0  # highest version it is known to have applied
        self.host_id: str | None = None  # GetStatusResponse.host_id once known: same host -> shared-memory pushes
        self.shared_memory = shared_memory  # push through /dev/shm when the server shares this host
        self.segment = SegmentWriter()  # this replica's segment, rewritten by each same-host push (pages stay touched)

    def status(self, retries: int | None = None, timeout_s: float = 30.0) -> policy_pb2.GetStatusResponse:
        reply = with_retries(
            lambda: self.stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=timeout_s),
            f"{self.name} GetStatus",
            self.retries if retries is None else retries,
        )
        self.version, self.highest = reply.weight_version, reply.highest_version
        self.host_id = reply.host_id
        return reply

    def generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        return with_retries(
            lambda: self.stub.Generate(request, timeout=self.timeout_s), f"{self.name} Generate", self.retries
        )

    def push(
        self,
        tensors: Iterable[tuple[str, torch.Tensor]],
        version: int | None,
        note: str,
        chunk_bytes: int = 4 << 20,
        expected_version: int | None = None,
        retries: int | None = None,
    ) -> policy_pb2.PushWeightsResponse:
        """Pushes `tensors` under a fresh push id; every retry of it sends the same id."""
        items = list(tensors)
        push_id = f"{self.writer}-v{version if version is not None else 'auto'}-{uuid.uuid4().hex[:8]}"

        def send() -> policy_pb2.PushWeightsResponse:
            if self._same_host():
                reply = self._push_shared(items, expected_version, note, version, push_id)
                if reply is not None:
                    return reply
            return self.stub.PushWeights(
                push_requests(items, chunk_bytes, expected_version, note, version=version, push_id=push_id),
                timeout=self.timeout_s,
            )

        try:
            reply = with_retries(
                send,
                f"{self.name} PushWeights",
                self.retries if retries is None else retries,
            )
        except grpc.RpcError as exc:
            # A retry after a lost reply is refused (its number is taken): it landed only if the
            # replica serves that number under this push's id, not merely the number.
            if version is None or exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            status = self.status()
            if status.weight_version != version or status.current.push_id != push_id:
                raise
            reply = policy_pb2.PushWeightsResponse(
                weight_version=version,
                push_id=push_id,
                sha256=status.current.sha256,
                digest=status.current.digest,
                checksum=status.current.checksum,
            )
        self.version, self.highest = reply.weight_version, max(self.highest, reply.weight_version)
        log.info("%s: pushed version %d push_id=%s (%s)", self.name, reply.weight_version, push_id, note)
        return reply

    def _same_host(self) -> bool:
        """Whether this replica shares the host (and /dev/shm) with this process, from its GetStatus host id."""
        if not self.shared_memory:
            return False
        if self.host_id is None:
            self.status()
        return bool(self.host_id) and self.host_id == host_id()

    def _push_shared(
        self, items: list, expected_version: int | None, note: str, version: int | None, push_id: str
    ) -> policy_pb2.PushWeightsResponse | None:
        """A same-host push through a shared-memory segment; None when the server refused the segment untouched."""
        started = time.perf_counter()
        try:
            segment = self.segment.write(items)
        except OSError as exc:  # no room or no access in /dev/shm: the stream still works
            log.warning("%s: cannot write a shared-memory segment (%s); streaming the tensors instead", self.name, exc)
            self.shared_memory = False
            return None
        written = time.perf_counter()
        try:
            reply = self.stub.PushWeights(
                segment_requests(segment, items, expected_version, note, version, push_id), timeout=self.timeout_s
            )
            self.segment.settle()  # adopt the file the policy handed back (or let go of the one it took)
            log.info(
                "%s: same-host push %.2f s (segment written in %.2f s; server received %.2f s, applied %.2f s)",
                self.name,
                time.perf_counter() - started,
                written - started,
                reply.receive_seconds,
                reply.apply_seconds,
            )
            return reply
        except grpc.RpcError as exc:
            # Refused as a same-host push (another host, permissions, off): stream instead from now on.
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or STREAM_INSTEAD not in exc.details():
                raise
            log.warning("%s: same-host push refused (%s); streaming the tensors instead", self.name, exc.details())
            self.shared_memory = False
            self.segment.close()
            return None

    def made(self, info: policy_pb2.WeightVersionInfo) -> bool:
        """Whether a version's recorded push came from this writer."""
        return info.origin == policy_pb2.VERSION_ORIGIN_PUSH and info.push_id.startswith(f"{self.writer}-")

    def foreign_state(self, status: policy_pb2.GetStatusResponse) -> str:
        """Why this replica's weights are not this writer's to change ("" if they are): a rollback or another's push."""
        current = status.current
        if current.origin == policy_pb2.VERSION_ORIGIN_ROLLBACK:
            return (
                f"rolled back to version {status.weight_version} ({status.version_note!r}); "
                "left as the operator left it"
            )
        if current.origin == policy_pb2.VERSION_ORIGIN_PUSH and not self.made(current):
            return (
                f"serves version {status.weight_version} from a push this trainer did not make "
                f"(push_id {current.push_id or 'none'!r}); not overwriting another writer's weights"
            )
        return ""

    def rollback(self, version: int | None, reason: str) -> policy_pb2.RollbackResponse:
        request = policy_pb2.RollbackRequest(reason=reason[:256])
        if version is not None:
            request.version = version
        reply = with_retries(
            lambda: self.stub.Rollback(request, timeout=self.timeout_s), f"{self.name} Rollback", self.retries
        )
        log.info("%s: rolled back %d -> %d (%s)", self.name, reply.previous_version, reply.weight_version, reason)
        return reply

    def close(self) -> None:
        self.segment.close()
        self.channel.close()


class PolicyClient:
    """Every policy replica the trainer drives, kept at one weight version."""

    def __init__(self, address: str | Iterable[str], timeout_s: float, retries: int, wait_s: float = 300.0) -> None:
        addresses = split_addresses(address)
        named = len(addresses) > 1
        self.writer = new_writer_id()  # one writer over every replica: its push ids mark the trainer's weights
        self.replicas = [
            PolicyReplica(f"policy[{i}]" if named else "policy", a, timeout_s, retries, self.writer)
            for i, a in enumerate(addresses)
        ]
        self.pool = ReplicaPool("policy", self.replicas, wait_s, self.recover)
        self.retries = retries
        self.version = 0  # the version every replica in rotation serves
        self.full_weights: FullWeights | None = None  # set by the trainer: what a catch-up push sends
        self.chunk_bytes = 4 << 20
        self.consistent = True  # whether every replica served the same version when status() last looked
        self._lock = threading.RLock()  # pushes and catch-ups, one at a time; held by the trainer while it updates

    @property
    def exclusive(self) -> threading.RLock:
        """Hold while changing the weights `full_weights` reads, so no catch-up sends a half-updated model."""
        return self._lock

    # ---- status ---------------------------------------------------------------

    def status(self) -> policy_pb2.GetStatusResponse:
        """Every reachable replica's status; they must serve the same model. Unreachable ones leave the rotation."""
        statuses = []
        for replica in self.replicas:
            try:
                statuses.append(replica.status())
            except grpc.RpcError as exc:
                if len(self.replicas) == 1:
                    raise
                self.pool.take_out(replica, f"GetStatus: {exc.code().name} ({exc.details()})")
        if not statuses:
            raise ReplicasUnavailable(f"no policy replica answered GetStatus: {self.lagging()}")
        models = {s.model for s in statuses}
        if len(models) > 1:
            raise ValueError(f"policy replicas serve different models: {sorted(models)}")
        versions = {s.weight_version for s in statuses}
        self.consistent = len(versions) == 1
        self.version = max(versions)
        reply = policy_pb2.GetStatusResponse()
        reply.CopyFrom(statuses[0])
        reply.weight_version = self.version
        self._export()
        return reply

    def lagging(self) -> list[str]:
        return [f"{r.name} ({r.reason})" for r in self.replicas if not r.in_rotation]

    def _export(self) -> None:
        metrics.REPLICAS_IN_ROTATION.labels("policy").set(len(self.pool.live()))
        for replica in self.replicas:
            metrics.REPLICA_VERSION_LAG.labels(replica.address).set(self.version - (replica.version or 0))

    # ---- generation -----------------------------------------------------------

    def generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        """Splits the prompts over the replicas in rotation; results come back in request order."""
        shards = max(1, min(len(self.pool.live()) or 1, len(request.prompts)))
        if shards == 1:
            return self.pool.call(lambda r: r.stub.Generate(request, timeout=r.timeout_s), "Generate")
        bounds = [len(request.prompts) * i // shards for i in range(shards + 1)]
        parts = []
        for i in range(shards):
            part = policy_pb2.GenerateRequest()
            part.CopyFrom(request)
            del part.prompts[:]
            part.prompts.extend(request.prompts[bounds[i] : bounds[i + 1]])
            part.request_id = f"{request.request_id}-part{i}" if request.request_id else ""
            parts.append(part)
        with ThreadPoolExecutor(shards, thread_name_prefix="generate") as workers:
            replies = list(
                workers.map(
                    lambda ip: self.pool.call(
                        lambda r: r.stub.Generate(ip[1], timeout=r.timeout_s), "Generate", prefer=ip[0]
                    ),
                    enumerate(parts),
                )
            )
        merged = policy_pb2.GenerateResponse()
        for reply in replies:
            merged.results.extend(reply.results)
        return merged

    # ---- pushes -----------------------------------------------------------------

    def push(
        self, tensors: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int, expected_version: int | None, note: str
    ) -> policy_pb2.PushWeightsResponse:
        """Pushes a new version to every replica in rotation in parallel, then catches up the rest."""
        with self._lock:
            items = list(tensors)
            self.chunk_bytes = chunk_bytes
            if expected_version is not None and expected_version != self.version:
                raise ValueError(f"push expected version {expected_version}, replicas serve {self.version}")
            target = max([self.version] + [r.highest for r in self.replicas]) + 1
            live = self.pool.live()
            accepted: list[policy_pb2.PushWeightsResponse] = []
            with ThreadPoolExecutor(max(1, len(live)), thread_name_prefix="push") as workers:
                futures = [
                    (r, workers.submit(r.push, items, target, note, chunk_bytes, r.version, self.retries)) for r in live
                ]
                for replica, future in futures:
                    try:
                        accepted.append(future.result())
                    except grpc.RpcError as exc:
                        self.pool.take_out(
                            replica, f"missed push of version {target}: {exc.code().name} ({exc.details()})"
                        )
            self.version = target
            if not accepted:  # nobody took the changed tensors: wait until recover() catches one up with all of them
                self.pool.call(lambda replica: replica, f"push of version {target} ({note})")
            self.recover()
            self._export()
            reply = accepted[0] if accepted else policy_pb2.PushWeightsResponse(weight_version=target)
            return reply

    def recover(self) -> None:
        """Brings replicas out of rotation back: re-admits those at the current version, catches up the ones behind."""
        with self._lock:
            for replica in self.replicas:
                if replica.in_rotation:
                    continue
                try:
                    status = replica.status(retries=0, timeout_s=PROBE_TIMEOUT_S)
                except grpc.RpcError:
                    continue  # still down
                if status.state == policy_pb2.ENGINE_STATE_FAILED:
                    continue
                foreign = replica.foreign_state(status)
                if foreign:
                    if replica.reason != f"diverged: {foreign}":
                        replica.reason = f"diverged: {foreign}"
                        log.error("%s: %s", replica.name, replica.reason)
                elif status.weight_version == self.version:
                    self.pool.put_back(replica)
                elif status.highest_version >= self.version:
                    replica.reason = (
                        f"diverged: serves version {status.weight_version} (highest {status.highest_version}) "
                        f"while the trainer is at {self.version}; not overwriting another writer's weights"
                    )
                    log.error("%s: %s", replica.name, replica.reason)
                elif self.full_weights is None:
                    replica.reason = f"behind at version {status.weight_version}; no weights to catch it up with"
                else:
                    try:
                        replica.push(
                            self.full_weights(),
                            self.version,
                            f"catch-up to version {self.version}",
                            self.chunk_bytes,
                            status.weight_version,
                            retries=0,
                        )
                    except grpc.RpcError as exc:
                        replica.reason = f"catch-up failed: {exc.code().name} ({exc.details()})"
                        continue
                    log.info(
                        "%s caught up from version %d to %d with a full push",
                        replica.name,
                        status.weight_version,
                        self.version,
                    )
                    self.pool.put_back(replica)
            self._export()

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()


class PolicyCaller:
    """Generate / GenerateStream on one asyncio channel, each call timed (`RequestResult`)."""

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
            return failure(started, exc)
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
            return failure(started, exc)
        elapsed = time.perf_counter() - started
        return RequestResult(
            started=started,
            success=True,
            e2el=elapsed,
            input_tokens=sum(len(result.prompt_token_ids) for result in reply.results),
            output_tokens=sum(len(sample.token_ids) for result in reply.results for sample in result.samples),
        )
