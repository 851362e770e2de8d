"""Server half of NCCL weight pushes, without vLLM: checking a push's tensor list and holding its slot.

The tensors of an NCCL push never pass through this process; vLLM's workers
receive them straight into the model. So everything that could refuse the push
(names, shapes, dtypes, completeness, size, version guards) is decided from the
declared list in BeginNcclPush, before the trainer starts broadcasting: a
refusal afterwards would leave the trainer's broadcast waiting for a receiver.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument, NotFound
from services.common.weight_stream import DeclaredTensors, PushHeader, TensorSpec, dtype_named, parse_begin


def check_init(request: policy_pb2.InitWeightTransferRequest, workers: int) -> dict:
    """vLLM's NCCLWeightTransferInitInfo fields for this server's workers, or INVALID_ARGUMENT."""
    if not request.master_address:
        raise InvalidArgument("master_address is empty: name the trainer host the policy can reach")
    if not 1 <= request.master_port <= 65535:
        raise InvalidArgument(f"master_port must be in 1..65535, got {request.master_port}")
    if request.rank_offset < 1:
        raise InvalidArgument("rank_offset must be >= 1: rank 0 is the trainer's sender")
    if request.world_size < request.rank_offset + workers:
        raise InvalidArgument(
            f"world_size {request.world_size} leaves no room for this server's {workers} workers at ranks "
            f"{request.rank_offset}..{request.rank_offset + workers - 1}"
        )
    info: dict = {
        "master_address": request.master_address,
        "master_port": int(request.master_port),
        "rank_offset": int(request.rank_offset),
        "world_size": int(request.world_size),
        "packed": bool(request.packed),
    }
    if request.packed_buffer_size_bytes:
        info["packed_buffer_size_bytes"] = int(request.packed_buffer_size_bytes)
    if request.packed_num_buffers:
        info["packed_num_buffers"] = int(request.packed_num_buffers)
    return info


@dataclass(frozen=True)
class NcclDeclaration:
    """A checked BeginNcclPush: its header and vLLM's NCCLWeightTransferUpdateInfo fields."""

    header: PushHeader
    update_info: dict  # names, dtype_names, shapes, in broadcast order
    sha256: bytes  # the declared digest of the weights (not verifiable here; may be empty)


def check_tensors(
    request: policy_pb2.BeginNcclPushRequest,
    manifest: Mapping[str, TensorSpec],
    max_push_bytes: int,
    fused_groups: tuple[tuple[str, ...], ...] | None,
) -> NcclDeclaration:
    """The declaration of a valid tensor list, or INVALID_ARGUMENT.

    The same parser and validator as a streamed push (`parse_begin`,
    `DeclaredTensors`): known names, the served shapes, pushable dtypes, nothing
    twice, the declared count and bytes, and completeness (every tensor, or whole
    fused units where partial pushes are accepted).
    """
    header = parse_begin(request.begin, max_push_bytes)
    if len(request.sha256) not in (0, 32):
        raise InvalidArgument(f"sha256 has {len(request.sha256)} bytes; send 32 (a SHA-256) or none")
    declared = DeclaredTensors(manifest, header, require_complete=True, fused_groups=fused_groups)
    for tensor in request.tensors:
        dtype = dtype_named(tensor.dtype)
        declared.declare(tensor.name, dtype, tuple(int(d) for d in tensor.shape), tensor.dtype)
    declared.finish()
    info = {
        "names": list(declared.names),
        "dtype_names": [t.dtype for t in request.tensors],
        "shapes": [[int(d) for d in t.shape] for t in request.tensors],
    }
    return NcclDeclaration(header, info, bytes(request.sha256))


@dataclass
class Reservation:
    """A checked NCCL push holding the server's push slot until it commits or expires."""

    declaration: NcclDeclaration
    push_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    claimed: bool = False
    _timer: asyncio.TimerHandle | None = None

    @property
    def header(self) -> PushHeader:
        return self.declaration.header


class ReservationSlot:
    """At most one reserved NCCL push; it holds `lock` (the servicer's push lock) from reserve to release.

    A reservation that is not committed within `timeout_s` (the trainer died
    between the two RPCs) gives the lock back, so weights can change again.
    """

    def __init__(self, lock: asyncio.Lock, timeout_s: float) -> None:
        self.lock = lock
        self.timeout_s = timeout_s
        self.current: Reservation | None = None

    def hold(self, reservation: Reservation) -> None:
        """Call with `lock` acquired: the slot now owns it."""
        assert self.lock.locked() and self.current is None
        self.current = reservation
        loop = asyncio.get_running_loop()
        reservation._timer = loop.call_later(self.timeout_s, self._expire, reservation.push_id)

    def take(self, push_id: str) -> Reservation:
        """Claims the reservation for its commit (stops the expiry); the caller must `release` it afterwards."""
        reservation = self.current
        if reservation is None or reservation.push_id != push_id or reservation.claimed:
            raise NotFound(
                f"no reserved NCCL push {push_id!r} (unknown, already committed, or expired after {self.timeout_s:g} s)"
            )
        reservation.claimed = True
        if reservation._timer is not None:
            reservation._timer.cancel()
            reservation._timer = None
        return reservation

    def release(self, push_id: str) -> None:
        if self.current is not None and self.current.push_id == push_id:
            self.current = None
            self.lock.release()

    def _expire(self, push_id: str) -> None:
        self.release(push_id)
