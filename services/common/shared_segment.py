"""The same-host push, both halves: the trainer writes the tensors once into shared memory, the policy stages them.

When the trainer and the policy share a host, streaming the bytes through gRPC
only copies them between two processes that could read the same pages. So the
sender writes a safetensors file in /dev/shm (mode 0600, its own), and the push
stream carries only `begin` (with `segment`: the path and the sender's host id)
and `commit` (the checksum, defined exactly as for a streamed push). The receiver
refuses with FAILED_PRECONDITION, before reading the file, when the host id
differs or the file is not a private regular file of its own user; the sender
then streams the tensors instead. Otherwise the receiver stages the file, checks
its tensors against the served model like a streamed push and verifies the
checksum over the staged bytes, the ones it will load: a segment changed after
its checksum was taken is DATA_LOSS and nothing is applied.

Pages tmpfs already holds are several times cheaper to write than fresh ones
(first-touch faults: 538 MB take about 0.4 s fresh here), and a copy of a model
costs as much again, so the two sides trade files instead of copying bytes: the
receiver moves the segment itself into staging (a rename, no copy) and, when it
has a spare staging file (a retired push no retained version needs), links that
file at the segment's path. The sender (`SegmentWriter`) then adopts the file it
finds at its path and rewrites its already-touched pages next time. Pages thus
circulate sender -> staged version -> spare -> sender without being copied. Until
the receiver has a spare (its first pushes) it keeps the segment, and the sender
allocates its next one in the background, between pushes. A segment on another
file system than staging is copied in the kernel instead. The sender must not
rewrite its segment while a push of it is in flight (PolicyReplica pushes one at
a time). A process of the same user can change either file at any time, but such
a process can also write the policy's memory: the check is for integrity, as the
stream's is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import stat
import struct
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
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
# Every refusal of the same-host path as such (another host, an unsafe file, the path turned off) is
# FAILED_PRECONDITION ending with this: the sender then streams the same push instead.
STREAM_INSTEAD = "nothing was applied: stream the tensors instead"
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


class SegmentWriter:
    """The sender's segment, one private file in shared memory rewritten in place by every push.

    The writer holds an flock on its segment for as long as it keeps it: a segment whose lock
    nobody holds belongs to a sender that died (SIGKILL, OOM) and would hold a whole model in
    tmpfs, that is in RAM, so a writer creating its segment removes those first.
    """

    def __init__(self, directory: Path = SHM_DIR, checksum: str = DEFAULT_CHECKSUM) -> None:
        self.directory, self.checksum = directory, checksum
        self.path: Path | None = None
        self._held: int | None = None  # descriptor holding the segment's lock
        self._size = 0  # bytes of the last write: what the next segment is allocated with
        self._next: Future[tuple[Path, int]] | None = None  # a segment being allocated for the next write
        self._allocator: ThreadPoolExecutor | None = None

    def write(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Segment:
        """Writes `tensors` into the segment (created on first use), hashing them on the way."""
        items = list(tensors)
        algorithm = checksum_named(self.checksum)
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
        size = 8 + len(header) + offset
        digest = algorithm.new()
        fd = self._open()
        try:
            position = os.pwrite(fd, struct.pack("<Q", len(header)) + header, 0)
            for name, tensor in items:
                raw = _raw_bytes(tensor)
                _digest_header(digest, name, push_dtype(tensor.dtype), tuple(tensor.shape))
                digest.update(raw)
                position += _pwrite_all(fd, raw, position)
            os.ftruncate(fd, size)  # a smaller push than the last leaves no stale tail
        except BaseException:
            self.close()
            raise
        self._size = size
        return Segment(self.path, digest.digest(), algorithm.name)

    def _open(self) -> int:
        """The segment's descriptor: the held one, the file a receiver handed back at the same path, or a new one."""
        if self._held is not None and self.settle():
            return self._held
        if self._held is None and self.path is None:
            remove_abandoned_segments(self.directory)
        self._release()
        prepared, self._next = self._next, None
        if prepared is not None:
            try:
                self.path, self._held = prepared.result()
                return self._held
            except OSError as exc:  # e.g. tmpfs full: a plain new file, whose pages the write faults in
                log.warning("allocating the next shared-memory segment failed (%s); writing a new one", exc)
        self.path, self._held = self._new_segment(0)
        return self._held

    def _new_segment(self, size: int) -> tuple[Path, int]:
        """A new private segment file, locked; with `size`, its pages written (with zeros) now."""
        path = self.directory / f"rlhf-push-{os.getpid()}-{uuid.uuid4().hex}.safetensors"
        return path, new_private_file(path, size, lock=True)

    def _allocate_next(self) -> None:
        """Prepares the next write's segment in the background, when the receiver took ours and handed none back.

        A receiver without a spare (its first pushes, before a retained version retires) keeps the file it
        took, and writing a model into fresh tmpfs pages costs several times a write into touched ones (538 MB
        in a training step here: 0.44-0.94 s against 0.10-0.20 s). Touching them now moves that cost out of the
        next push, into the time the trainer spends generating and training before it.
        """
        if self._size and self._next is None:
            if self._allocator is None:
                self._allocator = ThreadPoolExecutor(1, thread_name_prefix="segment-allocate")
            self._next = self._allocator.submit(self._new_segment, self._size)

    def settle(self) -> bool:
        """After a push: keeps holding the segment, or adopts the file the receiver left at its path; False when
        there is no usable file there (the next write makes a new one).

        Called right after each push, so the writer neither pins a file the receiver took (an open descriptor
        keeps an unlinked tmpfs file in RAM) nor leaves a handed-back file unlocked for long.
        """
        if self._held is None or self.path is None:
            return False
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:  # taken by a receiver without a spare: normal
            self._release()
            self._allocate_next()
            return False
        if _same_file(os.fstat(self._held), now):
            if _private(now):
                return True
            log.warning("shared-memory segment %s changed owner or mode; writing a new one", self.path)
            self.path.unlink(missing_ok=True)
            self._release()
            return False
        self._release()  # the receiver took our file and handed back its spare
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return False
        if not (_same_file(os.fstat(fd), now) and _private(now)):
            os.close(fd)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # someone else holds it: not ours to rewrite
            os.close(fd)
            return False
        self._held = fd
        return True

    def _release(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def close(self) -> None:
        """Removes the segment and any allocated for the next write (the next write makes a new one)."""
        prepared, self._next = self._next, None
        if prepared is not None:
            with contextlib.suppress(OSError):
                path, fd = prepared.result()
                os.close(fd)
                path.unlink(missing_ok=True)
        if self.path is not None and self._held is not None:
            try:
                if _same_file(os.stat(self.path, follow_symlinks=False), os.fstat(self._held)):
                    self.path.unlink()
            except FileNotFoundError:
                pass
        self._release()
        self.path = None


def remove_abandoned_segments(directory: Path = SHM_DIR) -> list[Path]:
    """Removes this user's segments in `directory` whose lock nobody holds (their writer died)."""
    removed = []
    for candidate in directory.glob("rlhf-push-*.safetensors"):
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid() or time.time() - info.st_mtime < 10:
                continue  # another user's, or just created: its writer may not hold the lock yet
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d shared-memory segment(s) of senders that died: %s", len(removed), removed)
    return removed


_ZEROS = bytes(8 << 20)


def new_private_file(path: Path, size: int = 0, lock: bool = False) -> int:
    """Creates `path` (mode 600, never over a file or through a link already there), flock-ed with `lock`, its
    first `size` bytes written as zeros; its open descriptor. On any failure nothing is left behind.

    The zeros make a later write find its pages resident. Not posix_fallocate: on tmpfs it allocates pages
    without touching them, and on a VM that hands freed memory back to its host (virtio-balloon free page
    reporting, as on this project's VMs) the first write to each such page still faults on the host: a 538 MB
    write into fallocated pages took 0.09-0.33 s here, into pages written before 0.11-0.13 s. The lock is
    taken before the zeros, so remove_abandoned_segments never takes a file still being prepared for dead.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        offset = 0
        while offset < size:
            offset += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - offset)], offset)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    view, written = memoryview(data).cast("B"), 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
    return written


def write_segment(
    tensors: Iterable[tuple[str, torch.Tensor]], directory: Path = SHM_DIR, checksum: str = DEFAULT_CHECKSUM
) -> Segment:
    """Writes `tensors` into a new private safetensors file in shared memory (a one-push SegmentWriter)."""
    return SegmentWriter(directory, checksum).write(tensors)


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
    reuse: Path | None = None,
) -> StagedPush:
    """Receiver half: refuses a foreign or unsafe segment unread, else stages it and verifies what it staged.

    The segment file itself is moved into `staging` (no copy), and `reuse` (a staged file no version needs:
    its pages are already in tmpfs) is handed back at the segment's path for the sender to rewrite. A segment
    on another file system is copied instead, over `reuse` when there is one.
    """
    local = host_id()
    if not local or segment.host_id != local:
        raise FailedPrecondition(
            f"shared-memory push from another host (sender host id {segment.host_id!r}, this server's "
            f"{local!r}); {STREAM_INSTEAD}"
        )
    source = Path(segment.path)
    if not source.is_absolute():
        raise InvalidArgument(f"segment path {segment.path!r} must be absolute")
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened here ({exc.strerror})"
        raise FailedPrecondition(f"shared-memory segment {source} {reason}; {STREAM_INSTEAD}") from None
    staged = staging / f"push-{uuid.uuid4().hex}.safetensors"
    try:
        info = os.fstat(fd)
        _check_private(source, info)
        if _moved(source, staged, info):
            if reuse is not None:
                _hand_back(reuse, source)
            names, total, digest = _verify(fd, info.st_size, header, manifest, fused_groups)
        else:
            if reuse is not None:
                os.rename(reuse, staged)
            with open(staged, "r+b" if reuse is not None else "w+b") as copy:
                _copy(fd, info.st_size, copy.fileno())
                copy.truncate(info.st_size)
                names, total, digest = _verify(copy.fileno(), info.st_size, header, manifest, fused_groups)
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


def _moved(source: Path, staged: Path, info: os.stat_result) -> bool:
    """Takes the sender's file itself into staging (no copy); False when it lies on another file system."""
    try:
        os.rename(source, staged)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise FailedPrecondition(
            f"shared-memory segment {source} cannot be moved into the staging directory ({exc.strerror}); "
            + STREAM_INSTEAD
        ) from None
    if not _same_file(os.stat(staged, follow_symlinks=False), info):
        raise DataLoss(f"shared-memory segment {source} was replaced while being taken; nothing was applied")
    return True


def _hand_back(spare: Path, path: Path) -> None:
    """Links the receiver's spare staging file at the sender's segment path, so the sender's next write reuses
    pages tmpfs already holds; skipped (the spare freed) when a file is there already or the two lie apart."""
    try:
        os.chmod(spare, 0o600)
        os.link(spare, path)  # never replaces a file that appeared at the path meanwhile
        os.utime(path)  # young: another writer's sweep leaves it to the sender, which adopts and locks it
    except OSError as exc:
        log.info("spare staging file %s not handed back to the sender at %s (%s)", spare, path, exc.strerror)
    finally:
        spare.unlink(missing_ok=True)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _private(info: os.stat_result) -> bool:
    """A regular file of this user that nobody else may read or write (mode 600)."""
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def _copy(source: int, size: int, target: int, chunk: int = 64 << 20) -> None:
    """Copies `size` bytes between two files in the kernel (no trip through this process's memory):
    copy_file_range, or sendfile where the two lie on different file systems."""
    copied, in_kernel = 0, True
    while copied < size:
        count = min(chunk, size - copied)
        if in_kernel:
            try:
                moved = os.copy_file_range(source, target, count, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                in_kernel = False
                continue
        else:
            os.lseek(target, copied, os.SEEK_SET)
            moved = os.sendfile(target, source, copied, count)
        if moved == 0:
            raise DataLoss(f"shared-memory segment ended after {copied} of {size} bytes; nothing was applied")
        copied += moved


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FailedPrecondition(f"shared-memory segment {path} is not a regular file; {STREAM_INSTEAD}")
    if not _private(info):
        raise FailedPrecondition(
            f"shared-memory segment {path} has owner uid {info.st_uid} and mode {stat.S_IMODE(info.st_mode):o}; "
            f"it must belong to this server's user (uid {os.geteuid()}) with mode 600 (readable by it only); "
            + STREAM_INSTEAD
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
