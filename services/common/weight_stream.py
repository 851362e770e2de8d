"""The weight-push wire format, both halves: the trainer sends, the policy assembles.

A push is `begin`, then each tensor as ordered `TensorChunk`s (raw little-endian
bytes, offset 0 opens a tensor and carries dtype and shape), then `commit` with a
SHA-256 over names, dtypes, shapes and bytes. The receiver checks every step and
only hands out tensors after the digest matches: a push that is cut off, corrupt
or mismatched never yields anything. No pickle: bytes are only ever read as the
declared dtype.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from rlhf.v1 import common_pb2, policy_pb2
from services.common.errors import DataLoss, InvalidArgument

if sys.byteorder != "little":  # the wire format is little-endian raw memory
    raise ImportError("weight_stream needs a little-endian machine")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

_TORCH_BY_WIRE = {
    common_pb2.DTYPE_FLOAT32: torch.float32,
    common_pb2.DTYPE_FLOAT16: torch.float16,
    common_pb2.DTYPE_BFLOAT16: torch.bfloat16,
}
_WIRE_BY_TORCH = {v: k for k, v in _TORCH_BY_WIRE.items()}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def wire_dtype(dtype: torch.dtype) -> int:
    if dtype not in _WIRE_BY_TORCH:
        raise InvalidArgument(f"dtype {dtype} cannot be pushed; use float32, float16 or bfloat16")
    return _WIRE_BY_TORCH[dtype]


def _digest_header(digest: "hashlib._Hash", name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    digest.update(name.encode() + b"\0" + DTYPE_NAMES[dtype].encode() + b"\0")
    digest.update(",".join(str(d) for d in shape).encode() + b"\0")


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def push_requests(
    tensors: Iterable[tuple[str, torch.Tensor]],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    expected_version: int | None = None,
    note: str = "",
) -> Iterator[policy_pb2.PushWeightsRequest]:
    """Yields the request stream of one push (sender half)."""
    items = list(tensors)
    begin = policy_pb2.PushBegin(
        num_tensors=len(items),
        total_bytes=sum(t.numel() * t.element_size() for _, t in items),
        note=note,
    )
    if expected_version is not None:
        begin.expected_version = expected_version
    yield policy_pb2.PushWeightsRequest(begin=begin)
    digest = hashlib.sha256()
    for name, tensor in items:
        dtype = wire_dtype(tensor.dtype)
        shape = tuple(tensor.shape)
        _digest_header(digest, name, tensor.dtype, shape)
        raw = _raw_bytes(tensor)
        digest.update(raw)
        for offset in range(0, max(len(raw), 1), chunk_bytes):
            chunk = common_pb2.TensorChunk(name=name, offset=offset, data=raw[offset : offset + chunk_bytes].tobytes())
            if offset == 0:
                chunk.dtype = dtype
                chunk.shape.extend(shape)
            yield policy_pb2.PushWeightsRequest(chunk=chunk)
    yield policy_pb2.PushWeightsRequest(commit=policy_pb2.PushCommit(sha256=digest.digest()))


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


@dataclass(frozen=True)
class StagedPush:
    """A verified push: tensor names in arrival order, and where their bytes are."""

    names: tuple[str, ...]
    total_bytes: int
    note: str
    expected_version: int | None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # MemorySink: the tensors themselves
    path: Path | None = None  # a file sink: the staged file


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
        tensor = torch.frombuffer(self._buffer, dtype=self._dtype) if self._buffer else torch.empty(0, dtype=self._dtype)
        self.tensors[self._name] = tensor.reshape(self._shape)
        self._buffer = bytearray()

    def finish(self) -> tuple[dict[str, torch.Tensor], None]:
        return self.tensors, None

    def discard(self) -> None:
        self.tensors.clear()


@dataclass
class PushAssembler:
    """Receiver half: feed requests in order, then `finish()` for the verified push.

    `manifest` maps every accepted name to its shape; with `require_complete` the
    push must carry every name (the engine fuses q/k/v and gate/up, so a partial
    layer would load garbage), unless `fused_groups` (see FUSED_GROUPS) is given:
    then a subset is accepted when every load unit it touches is whole. The bytes go
    to `sink` as they arrive (default: memory); on any failure call `discard()`.
    """

    manifest: Mapping[str, TensorSpec]
    max_total_bytes: int
    require_complete: bool = True
    fused_groups: tuple[tuple[str, ...], ...] | None = None
    sink: TensorSink = field(default_factory=MemorySink)
    _begin: policy_pb2.PushBegin | None = None
    _names: list[str] = field(default_factory=list)
    _current: str | None = None
    _size: int = 0
    _filled: int = 0
    _received: int = 0
    _digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    _committed: bytes | None = None

    def feed(self, request: policy_pb2.PushWeightsRequest) -> None:
        kind = request.WhichOneof("item")
        if self._committed is not None:
            raise InvalidArgument("push has messages after commit")
        if kind == "begin":
            self._on_begin(request.begin)
        elif self._begin is None:
            raise InvalidArgument("push must start with a `begin` message")
        elif kind == "chunk":
            self._on_chunk(request.chunk)
        elif kind == "commit":
            self._close_tensor()
            self._committed = bytes(request.commit.sha256)
        else:
            raise InvalidArgument("empty PushWeightsRequest (set begin, chunk or commit)")

    def _on_begin(self, begin: policy_pb2.PushBegin) -> None:
        if self._begin is not None:
            raise InvalidArgument("push has two `begin` messages")
        if begin.total_bytes > self.max_total_bytes:
            raise InvalidArgument(
                f"push declares {begin.total_bytes} bytes; this server accepts at most {self.max_total_bytes}"
            )
        if begin.num_tensors == 0:
            raise InvalidArgument("push declares no tensors")
        if len(begin.note) > 256:
            raise InvalidArgument(f"note has {len(begin.note)} characters; at most 256")
        self._begin = begin

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
        if self._received > self._begin.total_bytes:  # type: ignore[union-attr]
            raise InvalidArgument(f"push sent more than the {self._begin.total_bytes} bytes it declared")  # type: ignore[union-attr]
        self._digest.update(data)
        self.sink.write(data)
        self._filled = end

    def _open_tensor(self, chunk: common_pb2.TensorChunk) -> None:
        name = chunk.name
        if name not in self.manifest:
            raise InvalidArgument(f"unknown tensor {name!r}: not a parameter of the served model")
        if name in self._names:
            raise InvalidArgument(f"tensor {name!r} sent twice")
        if chunk.dtype not in _TORCH_BY_WIRE:
            raise InvalidArgument(f"{name}: dtype must be FLOAT32, FLOAT16 or BFLOAT16 (got enum {chunk.dtype})")
        shape = tuple(int(d) for d in chunk.shape)
        expected = self.manifest[name].shape
        if shape != expected:
            raise InvalidArgument(f"{name}: shape {list(shape)} does not match the served model's {list(expected)}")
        dtype = _TORCH_BY_WIRE[chunk.dtype]
        self._size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        self._current, self._filled = name, 0
        _digest_header(self._digest, name, dtype, shape)
        self.sink.open_tensor(name, dtype, shape, self._size)
        self._names.append(name)

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
        if self._begin is None:
            raise InvalidArgument("empty push: no `begin` message")
        if self._committed is None:
            raise InvalidArgument("push ended before its `commit` message; nothing was applied")
        if len(self._names) != self._begin.num_tensors:
            raise InvalidArgument(f"push declared {self._begin.num_tensors} tensors but sent {len(self._names)}")
        if self._received != self._begin.total_bytes:
            raise InvalidArgument(f"push declared {self._begin.total_bytes} bytes but sent {self._received}")
        if self.require_complete and self.fused_groups is not None:
            missing = incomplete_units(self._names, self.manifest, self.fused_groups)
            if missing:
                raise InvalidArgument(
                    f"partial push misses {len(missing)} tensors of the layers it touches (first: {missing[0]}); "
                    "send every tensor of a touched module and all of its fused siblings "
                    f"({', '.join('/'.join(g) for g in self.fused_groups)})"
                )
        elif self.require_complete:
            missing = sorted(set(self.manifest) - set(self._names))
            if missing:
                raise InvalidArgument(
                    f"push misses {len(missing)} of the model's tensors (first: {missing[0]}); "
                    "this server only applies complete pushes"
                )
        if self._digest.digest() != self._committed:
            raise DataLoss("push checksum mismatch: the bytes received are not the bytes sent; nothing was applied")
        expected = self._begin.expected_version if self._begin.HasField("expected_version") else None
        tensors, path = self.sink.finish()
        return StagedPush(tuple(self._names), self._received, self._begin.note, expected, tensors, path)
