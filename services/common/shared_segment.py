"""The same-host push, both halves: the trainer writes the tensors once into shared memory, the policy takes them.

When the trainer and the policy share a host, streaming the bytes through gRPC
only copies them between two processes that could read the same pages. So the
sender writes a safetensors file in /dev/shm (mode 0600, created exclusively),
and the push stream carries only `begin` (with `segment`: the path and the
sender's host id) and `commit` (the checksum, defined exactly as for a streamed
push). The receiver refuses with FAILED_PRECONDITION, before touching the file,
when the host id differs or the file is not a private regular file of its own
user; the sender then streams the tensors instead. Otherwise the receiver moves
the file into its staging directory (from then on the sender's name no longer
reaches it, and a sender that reuses the name writes a new file), checks its
tensors against the served model like a streamed push and verifies the checksum
over the bytes it will load: a segment changed after its checksum was taken is
DATA_LOSS and nothing is applied. A process of the same user that still holds
the file open could change it later, but such a process can also write the
policy's memory: the check is for integrity, as the stream's is.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import stat
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from rlhf.v1 import policy_pb2
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument
from services.common.weight_stream import (
    DEFAULT_CHECKSUM,
    PUSH_DTYPES,
    DeclaredTensors,
    PushHeader,
    StagedPush,
    TensorSpec,
    _digest_header,
    _raw_bytes,
    checksum_named,
    commit_digest,
    push_begin,
    push_dtype,
)

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
MAX_HEADER_BYTES = 64 << 20  # a safetensors header larger than this is not a checkpoint's
_BY_SAFETENSORS = {d.safetensors: d for d in PUSH_DTYPES}


@cache
def host_id(shm_dir: Path = SHM_DIR) -> str:
    """This host as a same-host push names it: boot id plus the device and inode of the shared-memory directory.

    Two machines differ in boot id; two containers on one machine share the boot id but not a
    private /dev/shm (its device differs). "" when there is no shared-memory directory.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        info = os.stat(shm_dir)
    except OSError:
        return ""
    return f"{boot}:{info.st_dev}:{info.st_ino}"


@dataclass(frozen=True)
class Segment:
    """A written segment: where it lies and the checksum of its tensors."""

    path: Path
    digest: bytes
    checksum: str


def write_segment(
    tensors: Iterable[tuple[str, torch.Tensor]], directory: Path = SHM_DIR, checksum: str = DEFAULT_CHECKSUM
) -> Segment:
    """Writes `tensors` once into a new private safetensors file in shared memory, hashing them on the way."""
    items = list(tensors)
    algorithm = checksum_named(checksum)
    entries, offset = {}, 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": push_dtype(tensor.dtype).safetensors,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 64)  # data aligned for the loader
    path = directory / f"rlhf-push-{os.getpid()}-{uuid.uuid4().hex}.safetensors"
    digest = algorithm.new()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            for name, tensor in items:
                raw = _raw_bytes(tensor)
                _digest_header(digest, name, push_dtype(tensor.dtype), tuple(tensor.shape))
                digest.update(raw)
                handle.write(raw)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Segment(path, digest.digest(), algorithm.name)


def segment_requests(
    segment: Segment,
    tensors: Iterable[tuple[str, torch.Tensor]],
    expected_version: int | None = None,
    note: str = "",
    version: int | None = None,
    push_id: str = "",
) -> Iterator[policy_pb2.PushWeightsRequest]:
    """The request stream of a same-host push: `begin` naming the segment, then `commit`; no chunks."""
    begin = push_begin(tensors, expected_version, note, version, push_id, segment.checksum)
    begin.segment.path = str(segment.path)
    begin.segment.host_id = host_id()
    yield policy_pb2.PushWeightsRequest(begin=begin)
    yield policy_pb2.PushWeightsRequest(commit=commit_digest(checksum_named(segment.checksum), segment.digest))


def take_segment(
    segment: policy_pb2.SharedSegment,
    header: PushHeader,
    committed: bytes,
    manifest: Mapping[str, TensorSpec],
    staging: Path,
    fused_groups: tuple[tuple[str, ...], ...] | None = None,
) -> StagedPush:
    """Receiver half: refuses a foreign or unsafe segment untouched, else takes it into `staging` and verifies it."""
    local = host_id()
    if not local or segment.host_id != local:
        raise FailedPrecondition(
            f"shared-memory push from another host (sender host id {segment.host_id!r}, this server's "
            f"{local!r}); nothing was applied: stream the tensors instead"
        )
    source = Path(segment.path)
    if not source.is_absolute():
        raise InvalidArgument(f"segment path {segment.path!r} must be absolute")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened here ({exc.strerror})"
        raise FailedPrecondition(
            f"shared-memory segment {source} {reason}; nothing was applied: stream the tensors instead"
        ) from None
    try:
        info = os.fstat(fd)
        _check_private(source, info)
        staged = staging / f"push-{uuid.uuid4().hex}.safetensors"
        try:
            os.rename(source, staged)
        except OSError as exc:
            raise FailedPrecondition(
                f"shared-memory segment {source} cannot be moved into the staging directory {staging} "
                f"({exc.strerror}); nothing was applied: stream the tensors instead"
            ) from None
        try:
            moved = os.stat(staged, follow_symlinks=False)
            if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
                raise DataLoss(f"shared-memory segment {source} was replaced while being taken; nothing was applied")
            names, total, digest = _verify(fd, info.st_size, header, manifest, fused_groups)
            if digest != committed:
                raise DataLoss(
                    "push checksum mismatch: the shared-memory segment changed after its checksum was taken; "
                    "nothing was applied"
                )
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)
    return StagedPush(names, total, header, digest, {}, staged)


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FailedPrecondition(f"shared-memory segment {path} is not a regular file; nothing was applied")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise FailedPrecondition(
            f"shared-memory segment {path} has owner uid {info.st_uid} and mode {stat.S_IMODE(info.st_mode):o}; "
            f"it must belong to this server's user (uid {os.geteuid()}) with mode 600 (readable by it only); "
            "nothing was applied: stream the tensors instead"
        )


def _verify(
    fd: int,
    size: int,
    header: PushHeader,
    manifest: Mapping[str, TensorSpec],
    fused_groups: tuple[tuple[str, ...], ...] | None,
) -> tuple[tuple[str, ...], int, bytes]:
    """Checks the segment's tensors like a streamed push's and hashes them in file order; (names, bytes, digest)."""
    if size < 8:
        raise InvalidArgument(f"shared-memory segment has {size} bytes: not a safetensors file")
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        try:
            (length,) = struct.unpack("<Q", view[:8])
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise InvalidArgument(f"shared-memory segment declares a {length}-byte header in a {size}-byte file")
            try:
                entries = json.loads(bytes(view[8 : 8 + length]))
            except ValueError as exc:
                raise InvalidArgument(f"shared-memory segment header is not JSON ({exc})") from None
            if not isinstance(entries, dict):
                raise InvalidArgument("shared-memory segment header is not a JSON object")
            entries.pop("__metadata__", None)
            declared = DeclaredTensors(manifest, header, fused_groups=fused_groups)
            tensors, position = [], 0
            for name, entry in sorted(entries.items(), key=lambda item: _offsets(item)[0]):
                dtype = _BY_SAFETENSORS.get(entry.get("dtype"))
                shape = tuple(int(d) for d in entry.get("shape", ()))
                nbytes = declared.declare(name, dtype, shape, entry.get("dtype"))
                start, end = _offsets((name, entry))
                if (start, end) != (position, position + nbytes):
                    raise InvalidArgument(
                        f"{name}: data at bytes {start}-{end}, expected {position}-{position + nbytes}"
                    )
                tensors.append((name, dtype, shape, start, end))
                position = end
            declared.finish()
            base = 8 + length
            if base + position != size:
                raise InvalidArgument(f"shared-memory segment has {size} bytes; its header describes {base + position}")
            digest = header.checksum.new()
            for name, dtype, shape, start, end in tensors:
                _digest_header(digest, name, dtype, shape)
                digest.update(view[base + start : base + end])
            return tuple(declared.names), position, digest.digest()
        finally:
            view.release()


def _offsets(item: tuple[str, object]) -> tuple[int, int]:
    name, entry = item
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise InvalidArgument(f"{name}: shared-memory segment entry has no valid data_offsets")
    return offsets[0], offsets[1]
