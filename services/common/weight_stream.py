"""The weight-push wire format, both halves: the trainer sends, the policy assembles.

A push is `begin`, then each tensor as ordered `TensorChunk`s (raw little-endian
bytes, offset 0 opens a tensor and carries dtype and shape), then `commit` with a
checksum over names, dtypes, shapes and bytes (XXH3-128 by default, SHA-256 for
older senders; `PushBegin.checksum` names it). The receiver checks every step and
only hands out tensors after the digest matches: a push that is cut off, corrupt
or mismatched never yields anything. No pickle: bytes are only ever read as the
declared dtype.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import xxhash

from rlhf.v1 import common_pb2, policy_pb2
from services.common.errors import DataLoss, InvalidArgument

if sys.byteorder != "little":  # the wire format is little-endian raw memory
    raise ImportError("weight_stream needs a little-endian machine")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
MAX_NOTE_CHARS = 256
MAX_PUSH_ID_CHARS = 64
_PUSH_ID = re.compile(r"[A-Za-z0-9_.:-]*")


@dataclass(frozen=True)
class PushDtype:
    """One dtype a push may carry, under each name the wire, torch and safetensors give it."""

    name: str  # the name in digests, NcclTensor.dtype and configs ("float32")
    torch: torch.dtype
    wire: int  # rlhf.v1.DType value in TensorChunk.dtype
    safetensors: str  # dtype string in a safetensors header
    itemsize: int  # bytes per element


# The one table of pushable dtypes: every sender, receiver, stager and config check reads it.
PUSH_DTYPES: tuple[PushDtype, ...] = (
    PushDtype("float32", torch.float32, common_pb2.DTYPE_FLOAT32, "F32", 4),
    PushDtype("float16", torch.float16, common_pb2.DTYPE_FLOAT16, "F16", 2),
    PushDtype("bfloat16", torch.bfloat16, common_pb2.DTYPE_BFLOAT16, "BF16", 2),
)
PUSH_DTYPE_NAMES: tuple[str, ...] = tuple(d.name for d in PUSH_DTYPES)
_BY_NAME = {d.name: d for d in PUSH_DTYPES}
_BY_TORCH = {d.torch: d for d in PUSH_DTYPES}
_BY_WIRE = {d.wire: d for d in PUSH_DTYPES}


def push_dtype(dtype: torch.dtype) -> PushDtype:
    """The table entry of a tensor's dtype, or INVALID_ARGUMENT for one that cannot be pushed."""
    if dtype not in _BY_TORCH:
        raise InvalidArgument(f"dtype {dtype} cannot be pushed; use {', '.join(PUSH_DTYPE_NAMES)}")
    return _BY_TORCH[dtype]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a configured push dtype name ("bfloat16"); ValueError for any other name."""
    if name not in _BY_NAME:
        raise ValueError(f"push_dtype must be one of {sorted(PUSH_DTYPE_NAMES)}, got {name!r}")
    return _BY_NAME[name].torch


def dtype_named(name: str) -> PushDtype | None:
    """The table entry of a dtype name as NcclTensor.dtype carries it; None if it is not pushable."""
    return _BY_NAME.get(name)


def wire_dtype(dtype: torch.dtype) -> int:
    return push_dtype(dtype).wire


@dataclass(frozen=True)
class Checksum:
    """An integrity checksum a push may carry: its name, wire value, digest size and constructor."""

    name: str  # "xxh3_128", "sha256"
    wire: int  # rlhf.v1.ChecksumAlgorithm value
    size: int  # digest bytes
    new: object  # () -> hasher with update(buffer) and digest()


# XXH3-128 is the default: integrity is what a push's checksum is for (the transport is authenticated),
# and it hashes at ~11 GB/s on one core here against SHA-256's 1.8 GB/s. SHA-256 stays for older senders.
CHECKSUMS: tuple[Checksum, ...] = (
    Checksum("xxh3_128", policy_pb2.CHECKSUM_ALGORITHM_XXH3_128, 16, xxhash.xxh3_128),
    Checksum("sha256", policy_pb2.CHECKSUM_ALGORITHM_SHA256, 32, hashlib.sha256),
)
DEFAULT_CHECKSUM = "xxh3_128"
_CHECKSUM_BY_NAME = {c.name: c for c in CHECKSUMS}
_CHECKSUM_BY_WIRE = {c.wire: c for c in CHECKSUMS} | {
    policy_pb2.CHECKSUM_ALGORITHM_UNSPECIFIED: _CHECKSUM_BY_NAME["sha256"]
}


def checksum_named(name: str) -> Checksum:
    """The checksum of a configured name; ValueError for any other."""
    if name not in _CHECKSUM_BY_NAME:
        raise ValueError(f"checksum must be one of {sorted(_CHECKSUM_BY_NAME)}, got {name!r}")
    return _CHECKSUM_BY_NAME[name]


def commit_digest(checksum: Checksum, digest: bytes) -> policy_pb2.PushCommit:
    """The PushCommit carrying `digest`: SHA-256 in its historic field, any other algorithm in `digest`."""
    if checksum.name == "sha256":
        return policy_pb2.PushCommit(sha256=digest)
    return policy_pb2.PushCommit(digest=digest)


def _digest_header(digest, name: str, dtype: PushDtype, shape: tuple[int, ...]) -> None:
    digest.update(name.encode() + b"\0" + dtype.name.encode() + b"\0")
    digest.update(",".join(str(d) for d in shape).encode() + b"\0")


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def weights_digest(tensors: Iterable[tuple[str, torch.Tensor]], checksum: str = "sha256") -> bytes:
    """The digest PushCommit defines, for a push whose bytes do not travel in the stream (NCCL: SHA-256)."""
    digest = checksum_named(checksum).new()
    for name, tensor in tensors:
        _digest_header(digest, name, push_dtype(tensor.dtype), tuple(tensor.shape))
        digest.update(_raw_bytes(tensor))
    return digest.digest()


def push_begin(
    tensors: Iterable[tuple[str, torch.Tensor]],
    expected_version: int | None = None,
    note: str = "",
    version: int | None = None,
    push_id: str = "",
    checksum: str = "sha256",
) -> policy_pb2.PushBegin:
    """The PushBegin of a push of `tensors`: counts, guards, note and identity (streamed and NCCL pushes alike)."""
    items = list(tensors)
    begin = policy_pb2.PushBegin(
        num_tensors=len(items),
        total_bytes=sum(math.prod(t.shape) * t.element_size() for _, t in items),
        note=note,
        push_id=push_id,
        checksum=checksum_named(checksum).wire,
    )
    if expected_version is not None:
        begin.expected_version = expected_version
    if version is not None:
        begin.version = version
    return begin


def push_requests(
    tensors: Iterable[tuple[str, torch.Tensor]],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    expected_version: int | None = None,
    note: str = "",
    version: int | None = None,
    push_id: str = "",
    checksum: str = DEFAULT_CHECKSUM,
) -> Iterator[policy_pb2.PushWeightsRequest]:
    """Yields the request stream of one push (sender half); `version` and `push_id` go into its PushBegin.

    Tensors are read one at a time: a CPU tensor already in the push dtype is sent from its own memory,
    never from a full copy of the model made first (protobuf copies one chunk at a time).
    """
    items = list(tensors)
    algorithm = checksum_named(checksum)
    yield policy_pb2.PushWeightsRequest(begin=push_begin(items, expected_version, note, version, push_id, checksum))
    digest = algorithm.new()
    for name, tensor in items:
        dtype = push_dtype(tensor.dtype)
        shape = tuple(tensor.shape)
        _digest_header(digest, name, dtype, shape)
        raw = _raw_bytes(tensor)
        digest.update(raw)
        for offset in range(0, max(len(raw), 1), chunk_bytes):
            request = policy_pb2.PushWeightsRequest()
            chunk = request.chunk  # filled in place: PushWeightsRequest(chunk=...) would copy the bytes once more
            chunk.name, chunk.offset = name, offset
            chunk.data = raw[offset : offset + chunk_bytes].tobytes()
            if offset == 0:
                chunk.dtype = dtype.wire
                chunk.shape.extend(shape)
            yield request
    yield policy_pb2.PushWeightsRequest(commit=commit_digest(algorithm, digest.digest()))


@dataclass(frozen=True)
class PushHeader:
    """A push's PushBegin, parsed and checked once (streamed and NCCL pushes read it the same way)."""

    num_tensors: int
    total_bytes: int
    note: str
    expected_version: int | None  # refuse unless this version serves at commit
    version: int | None  # serve as this number instead of the next free one
    push_id: str  # client-chosen identity, recorded with the version ("" if none)
    checksum: Checksum = CHECKSUMS[1]  # the algorithm PushCommit's digest uses (SHA-256 if unspecified)


def parse_begin(begin: policy_pb2.PushBegin, max_total_bytes: int) -> PushHeader:
    """The checked header of a push, or INVALID_ARGUMENT saying which field is wrong and what the limit is."""
    if begin.num_tensors == 0:
        raise InvalidArgument("push declares no tensors")
    if begin.total_bytes > max_total_bytes:
        raise InvalidArgument(f"push declares {begin.total_bytes} bytes; this server accepts at most {max_total_bytes}")
    if len(begin.note) > MAX_NOTE_CHARS:
        raise InvalidArgument(f"note has {len(begin.note)} characters; at most {MAX_NOTE_CHARS}")
    if len(begin.push_id) > MAX_PUSH_ID_CHARS or not _PUSH_ID.fullmatch(begin.push_id):
        raise InvalidArgument(
            f"push_id must be at most {MAX_PUSH_ID_CHARS} letters, digits, '-', '_', '.' or ':' "
            f"(got {len(begin.push_id)} characters)"
        )
    if begin.checksum not in _CHECKSUM_BY_WIRE:
        raise InvalidArgument(
            f"unknown checksum algorithm {begin.checksum}; use one of {', '.join(c.name for c in CHECKSUMS)}"
        )
    return PushHeader(
        num_tensors=int(begin.num_tensors),
        total_bytes=int(begin.total_bytes),
        note=begin.note,
        expected_version=int(begin.expected_version) if begin.HasField("expected_version") else None,
        version=int(begin.version) if begin.HasField("version") else None,
        push_id=begin.push_id,
        checksum=_CHECKSUM_BY_WIRE[begin.checksum],
    )


def committed_digest(commit: policy_pb2.PushCommit, checksum: Checksum) -> bytes:
    """The digest a PushCommit carries for `checksum`, or INVALID_ARGUMENT if it has the wrong size."""
    digest = bytes(commit.digest) or (bytes(commit.sha256) if checksum.name == "sha256" else b"")
    if len(digest) != checksum.size:
        raise InvalidArgument(f"commit carries a {len(digest)}-byte digest; {checksum.name} has {checksum.size} bytes")
    return digest


# Checkpoint modules vLLM fuses into one parameter when it loads them, by HF `model_type`.
# A partial push must carry all members of a group it touches (with every tensor of
# each member): the engine reloads a fused parameter only as a whole, and the
# members left out would be filled with uninitialized memory. Unknown model types
# get None, which means only complete pushes are accepted.
_LLAMA_LIKE = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
FUSED_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
}


def fused_groups_for(model_type: str) -> tuple[tuple[str, ...], ...] | None:
    return FUSED_GROUPS.get(model_type)


def load_unit(name: str, groups: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The tensors that load together: a module (the name minus its leaf), fused siblings as one."""
    parts = name.split(".")[:-1]
    for index, part in enumerate(parts):
        for group in groups:
            if part in group:
                parts[index] = "+".join(group)
    return tuple(parts)


def incomplete_units(names: Iterable[str], manifest: Iterable[str], groups: tuple[tuple[str, ...], ...]) -> list[str]:
    """Names of `manifest` a partial push of `names` must add so every unit it touches is whole."""
    present = set(names)
    touched = {load_unit(name, groups) for name in present}
    return sorted(n for n in manifest if n not in present and load_unit(n, groups) in touched)


@dataclass(frozen=True)
class TensorSpec:
    """What the served model expects for one name."""

    shape: tuple[int, ...]
    dtype: str = ""  # the served checkpoint's safetensors dtype ("F32", "BF16", "I64", ...); "" = not known


# Checkpoint dtypes a floating push may replace (the engine casts it to its own dtype on load).
FLOATING_CHECKPOINT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


class DeclaredTensors:
    """The one check of a push's tensors against the served model, for streamed and NCCL pushes alike.

    A streamed push declares each tensor as its first chunk arrives; an NCCL push
    lists them all in BeginNcclPush. Both call `declare` per tensor and `finish`
    once, so the same push is refused with the same message on either path.
    With `require_complete` the push must carry every tensor, or, where
    `fused_groups` is given, every tensor of each load unit it touches.
    """

    def __init__(
        self,
        manifest: Mapping[str, TensorSpec],
        header: PushHeader,
        require_complete: bool = True,
        fused_groups: tuple[tuple[str, ...], ...] | None = None,
    ) -> None:
        self.manifest, self.header = manifest, header
        self.require_complete, self.fused_groups = require_complete, fused_groups
        self.names: list[str] = []
        self.total_bytes = 0

    def declare(self, name: str, dtype: PushDtype | None, shape: tuple[int, ...], got_dtype: object = None) -> int:
        """Accepts the next tensor (`dtype` None: not a pushable dtype, `got_dtype` says what was sent); its bytes."""
        if name not in self.manifest:
            raise InvalidArgument(f"unknown tensor {name!r}: not a parameter of the served model")
        if name in self.names:
            raise InvalidArgument(f"tensor {name!r} declared twice")
        if dtype is None:
            raise InvalidArgument(f"{name}: dtype must be one of {', '.join(PUSH_DTYPE_NAMES)}, got {got_dtype!r}")
        expected = self.manifest[name].shape
        if shape != expected:
            raise InvalidArgument(f"{name}: shape {shape} does not match the served model's {expected}")
        served = self.manifest[name].dtype
        if served and served not in FLOATING_CHECKPOINT_DTYPES:
            raise InvalidArgument(
                f"{name}: the served checkpoint holds it as {served}; a {dtype.name} push cannot replace it"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        self.names.append(name)
        self.total_bytes += nbytes
        return nbytes

    def finish(self) -> None:
        """Checks the declared counts and the completeness rule once every tensor is declared."""
        if len(self.names) != self.header.num_tensors:
            raise InvalidArgument(f"push declares {self.header.num_tensors} tensors but carries {len(self.names)}")
        if self.total_bytes != self.header.total_bytes:
            raise InvalidArgument(
                f"push declares {self.header.total_bytes} bytes but its tensors hold {self.total_bytes}"
            )
        if not self.require_complete:
            return
        if self.fused_groups is not None:
            missing = incomplete_units(self.names, self.manifest, self.fused_groups)
            if missing:
                raise InvalidArgument(
                    f"partial push misses {len(missing)} tensors of the layers it touches (first: {missing[0]}); "
                    "a partial push carries every tensor of a touched module and all of its fused siblings "
                    f"({', '.join('/'.join(g) for g in self.fused_groups)})"
                )
            return
        missing = sorted(set(self.manifest) - set(self.names))
        if missing:
            raise InvalidArgument(
                f"push misses {len(missing)} of the model's tensors (first: {missing[0]}); "
                "this server only applies complete pushes"
            )


@dataclass(frozen=True)
class StagedPush:
    """A verified push: tensor names in arrival order, and where their bytes are."""

    names: tuple[str, ...]
    total_bytes: int
    header: PushHeader
    digest: bytes  # the verified digest (header.checksum): the pushed weights' identity next to header.push_id
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # MemorySink: the tensors themselves
    path: Path | None = None  # a file sink: the staged file

    @property
    def note(self) -> str:
        return self.header.note

    @property
    def expected_version(self) -> int | None:
        return self.header.expected_version


class TensorSink(Protocol):
    """Where an assembler puts tensor bytes as they arrive (memory, or a staging file)."""

    def open_tensor(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def close_tensor(self) -> None: ...
    def finish(self) -> tuple[dict[str, torch.Tensor], Path | None]: ...
    def discard(self) -> None: ...


class MemorySink:
    """Tensors assembled in memory (tests, small pushes)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._name, self._dtype, self._shape = "", torch.float32, ()
        self._buffer = bytearray()
        self._filled = 0

    def open_tensor(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int) -> None:
        self._name, self._dtype, self._shape = name, dtype, shape
        self._buffer, self._filled = bytearray(nbytes), 0

    def write(self, data: bytes) -> None:
        self._buffer[self._filled : self._filled + len(data)] = data
        self._filled += len(data)

    def close_tensor(self) -> None:
        tensor = (
            torch.frombuffer(self._buffer, dtype=self._dtype) if self._buffer else torch.empty(0, dtype=self._dtype)
        )
        self.tensors[self._name] = tensor.reshape(self._shape)
        self._buffer = bytearray()

    def finish(self) -> tuple[dict[str, torch.Tensor], None]:
        return self.tensors, None

    def discard(self) -> None:
        self.tensors.clear()


def _wire_name(value: int) -> str:
    try:
        return common_pb2.DType.Name(value)
    except ValueError:
        return str(value)


@dataclass
class PushAssembler:
    """Receiver half: feed requests in order, then `finish()` for the verified push.

    `manifest` maps every accepted name to its shape; the tensors are checked by
    `DeclaredTensors` (see there for `require_complete` and `fused_groups`). The
    bytes go to `sink` as they arrive (default: memory); on any failure call `discard()`.
    """

    manifest: Mapping[str, TensorSpec]
    max_total_bytes: int
    require_complete: bool = True
    fused_groups: tuple[tuple[str, ...], ...] | None = None
    sink: TensorSink = field(default_factory=MemorySink)
    _header: PushHeader | None = None
    _declared: DeclaredTensors | None = None
    _current: str | None = None
    _size: int = 0
    _filled: int = 0
    _received: int = 0
    _digest: object = None  # the header's checksum, created at `begin`
    _committed: bytes | None = None

    @property
    def header(self) -> PushHeader | None:
        """The parsed PushBegin once it has arrived."""
        return self._header

    def feed(self, request: policy_pb2.PushWeightsRequest) -> None:
        kind = request.WhichOneof("item")
        if self._committed is not None:
            raise InvalidArgument("push has messages after commit")
        if kind == "begin":
            self._on_begin(request.begin)
        elif self._header is None:
            raise InvalidArgument("push must start with a `begin` message")
        elif kind == "chunk":
            self._on_chunk(request.chunk)
        elif kind == "commit":
            self._close_tensor()
            self._committed = committed_digest(request.commit, self._header.checksum)
        else:
            raise InvalidArgument("empty PushWeightsRequest (set begin, chunk or commit)")

    def _on_begin(self, begin: policy_pb2.PushBegin) -> None:
        if self._header is not None:
            raise InvalidArgument("push has two `begin` messages")
        self._header = parse_begin(begin, self.max_total_bytes)
        if begin.HasField("segment"):
            raise InvalidArgument("a shared-memory push (begin.segment) cannot be assembled from chunks")
        self._digest = self._header.checksum.new()
        self._declared = DeclaredTensors(self.manifest, self._header, self.require_complete, self.fused_groups)

    def _on_chunk(self, chunk: common_pb2.TensorChunk) -> None:
        if chunk.offset == 0:
            self._close_tensor()
            self._open_tensor(chunk)
        elif chunk.name != self._current:
            raise InvalidArgument(f"chunk for {chunk.name!r} at offset {chunk.offset} continues no open tensor")
        if chunk.offset != self._filled:
            raise InvalidArgument(f"{chunk.name}: chunk at offset {chunk.offset}, expected {self._filled}")
        data = chunk.data
        end = self._filled + len(data)
        if end > self._size:
            raise InvalidArgument(f"{chunk.name}: {end} bytes sent for a tensor of {self._size} bytes")
        self._received += len(data)
        if self._received > self._header.total_bytes:  # type: ignore[union-attr]
            raise InvalidArgument(f"push sent more than the {self._header.total_bytes} bytes it declared")  # type: ignore[union-attr]
        self._digest.update(data)
        self.sink.write(data)
        self._filled = end

    def _open_tensor(self, chunk: common_pb2.TensorChunk) -> None:
        name, dtype, shape = chunk.name, _BY_WIRE.get(chunk.dtype), tuple(int(d) for d in chunk.shape)
        self._size = self._declared.declare(name, dtype, shape, _wire_name(chunk.dtype))  # type: ignore[union-attr]
        self._current, self._filled = name, 0
        _digest_header(self._digest, name, dtype, shape)  # type: ignore[arg-type]
        self.sink.open_tensor(name, dtype.torch, shape, self._size)  # type: ignore[union-attr]

    def _close_tensor(self) -> None:
        if self._current is None:
            return
        if self._filled != self._size:
            raise InvalidArgument(f"{self._current}: got {self._filled} of {self._size} bytes")
        self.sink.close_tensor()
        self._current = None

    def discard(self) -> None:
        """Drops whatever was received (a failed or abandoned push)."""
        self.sink.discard()

    def finish(self) -> StagedPush:
        """Verifies completeness and the digest; raises unless the push is whole."""
        if self._header is None or self._declared is None:
            raise InvalidArgument("empty push: no `begin` message")
        if self._committed is None:
            raise InvalidArgument("push ended before its `commit` message; nothing was applied")
        self._declared.finish()
        digest = self._digest.digest()
        if digest != self._committed:
            raise DataLoss("push checksum mismatch: the bytes received are not the bytes sent; nothing was applied")
        tensors, path = self.sink.finish()
        return StagedPush(tuple(self._declared.names), self._received, self._header, digest, tensors, path)
