"""Server half of NCCL weight pushes, without vLLM: checking a push's tensor list and holding its slot.

The tensors of an NCCL push never pass through this process; vLLM's workers
receive them straight into the model. So everything that could refuse the push
(names, shapes, dtypes, completeness, size, version guards) is decided from the
declared list in BeginNcclPush, before the trainer starts broadcasting: a
refusal afterwards would leave the trainer's broadcast waiting for a receiver.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument, NotFound
from services.common.weight_stream import TensorSpec, incomplete_units

# Bytes per element of the dtypes a push may carry (the same three as PushWeights).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


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


def check_tensors(
    request: policy_pb2.BeginNcclPushRequest,
    manifest: Mapping[str, TensorSpec],
    max_push_bytes: int,
    fused_groups: tuple[tuple[str, ...], ...] | None,
) -> dict:
    """vLLM's NCCLWeightTransferUpdateInfo fields (names, dtype_names, shapes) for a valid list, or INVALID_ARGUMENT.

    The same rules as a streamed push: known names, the served shapes, float
    dtypes, nothing twice, the declared count and bytes, and completeness
    (every tensor, or whole fused units where partial pushes are accepted).
    """
    begin = request.begin
    if len(begin.note) > 256:
        raise InvalidArgument(f"note has {len(begin.note)} characters; at most 256")
    if not request.tensors:
        raise InvalidArgument("push declares no tensors")
    names, dtypes, shapes = [], [], []
    total = 0
    for index, tensor in enumerate(request.tensors):
        name = tensor.name
        spec = manifest.get(name)
        if spec is None:
            raise InvalidArgument(f"tensors[{index}]: unknown tensor {name!r}: not a parameter of the served model")
        if name in names:
            raise InvalidArgument(f"tensors[{index}]: tensor {name!r} declared twice")
        if tensor.dtype not in DTYPE_BYTES:
            raise InvalidArgument(f"{name}: dtype must be one of {sorted(DTYPE_BYTES)}, got {tensor.dtype!r}")
        shape = [int(d) for d in tensor.shape]
        if tuple(shape) != spec.shape:
            raise InvalidArgument(f"{name}: shape {tuple(shape)} does not match the served model's {spec.shape}")
        names.append(name)
        dtypes.append(tensor.dtype)
        shapes.append(shape)
        total += math.prod(shape) * DTYPE_BYTES[tensor.dtype]
    if begin.num_tensors != len(names):
        raise InvalidArgument(f"begin declares {begin.num_tensors} tensors but the list has {len(names)}")
    if begin.total_bytes != total:
        raise InvalidArgument(f"begin declares {begin.total_bytes} bytes but the listed tensors hold {total}")
    if total > max_push_bytes:
        raise InvalidArgument(f"push holds {total} bytes; this server accepts at most {max_push_bytes}")
    if fused_groups is not None:
        missing = incomplete_units(names, manifest, fused_groups)
        if missing:
            raise InvalidArgument(
                f"partial push misses {len(missing)} tensors of the layers it touches (first: {missing[0]}); "
                "list every tensor of a touched module and all of its fused siblings"
            )
    else:
        missing = sorted(set(manifest) - set(names))
        if missing:
            raise InvalidArgument(
                f"push misses {len(missing)} of the model's tensors (first: {missing[0]}); "
                "this server only applies complete pushes"
            )
    return {"names": names, "dtype_names": dtypes, "shapes": shapes}


@dataclass
class Reservation:
    """A checked NCCL push holding the server's push slot until it commits or expires."""

    update_info: dict
    note: str
    expected_version: int | None
    requested_version: int | None
    total_bytes: int
    push_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    claimed: bool = False
    _timer: asyncio.TimerHandle | None = None


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
            raise NotFound(f"no reserved NCCL push {push_id!r} (unknown, already committed, or expired after {self.timeout_s:g} s)")
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
