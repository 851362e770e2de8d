"""What a push must match (the served checkpoint's tensors) and where it waits before loading."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from services.common.shared_segment import new_private_file
from services.common.weight_stream import StagedPush, TensorSpec, push_dtype


def read_manifest(model_dir: str) -> dict[str, TensorSpec]:
    """Names, shapes and dtypes of every tensor in the checkpoint the server started from."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    manifest: dict[str, TensorSpec] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                manifest[name] = TensorSpec(tuple(tensor.get_shape()), tensor.get_dtype())
    return manifest


_HELD_LOCKS: list[int] = []  # descriptors kept open for the process's life: the lock is the "still in use" mark


def staging_dir(configured: str) -> Path:
    """Where pushes are staged: `configured`, or a per-process directory in /dev/shm (else the temp dir).

    A default directory is marked in use by an flock held for the process's life. Default directories of
    servers that died without cleaning up (SIGKILL, OOM) hold whole models in tmpfs, that is in RAM, so a
    starting server removes those whose lock nobody holds. The lock, not the pid, decides: pids are reused
    and do not cross container pid namespaces that share /dev/shm.
    """
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        parent = Path("/dev/shm")
    else:
        parent = Path(tempfile.gettempdir())
    path = parent / f"rlhf-policy-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / _IN_USE, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD_LOCKS.append(descriptor)
    remove_abandoned_staging(parent, keep=path)
    return path


_IN_USE = ".in-use.lock"


def remove_abandoned_staging(parent: Path, keep: Path) -> list[Path]:
    """Removes this user's default staging directories under `parent` whose in-use lock nobody holds."""
    removed = []
    for candidate in parent.glob("rlhf-policy-*"):
        lock = candidate / _IN_USE
        if candidate == keep or candidate.is_symlink() or not lock.is_file():
            continue  # no lock file: not ours to judge (an older server, or not a staging directory)
        if candidate.stat().st_uid != os.getuid():
            continue
        try:
            descriptor = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue  # a live server holds it
        try:
            shutil.rmtree(candidate, ignore_errors=True)  # under the lock: nobody can claim it meanwhile
        finally:
            os.close(descriptor)
        removed.append(candidate)
    return removed


def release_staging(path: Path, configured: str) -> None:
    """Cleans up at shutdown: a configured directory loses its leftover push files, a default one goes whole."""
    if configured:
        for leftover in [*path.glob("push-*.safetensors"), *path.glob("restore-*.safetensors")]:
            leftover.unlink(missing_ok=True)
        return
    shutil.rmtree(path, ignore_errors=True)  # the in-use lock file goes with it; our descriptor still holds it
    while _HELD_LOCKS:
        os.close(_HELD_LOCKS.pop())


def write_staged(push: StagedPush, directory: Path) -> Path:
    """The staged file of a push: the one its file sink wrote, or one written now from its tensors."""
    if push.path is not None:
        return push.path
    path = directory / f"push-{uuid.uuid4().hex}.safetensors"
    save_file(push.tensors, str(path))
    return path


def prepare_spare(directory: Path, size: int) -> Path:
    """A private staging file of `size` bytes with every page written (zeros), for the next push to overwrite.

    A push written into fresh tmpfs pages pays a page fault per page: on this project's VMs a streamed
    538 MB push took 0.81-1.27 s into a new file against 0.73-0.75 s into one written before. Until a
    retained version retires (the first keep_versions + 1 pushes) there is no such file, so one is written
    ahead, between pushes.
    """
    path = directory / f"push-{uuid.uuid4().hex}.safetensors"
    os.close(new_private_file(path, size))
    return path


_ALIGN = 64


class SafetensorsFileSink:
    """Writes a push straight into a safetensors file in the staging directory as chunks arrive.

    The header (names and offsets) is only known at the end, so room for the largest
    header the manifest allows is reserved up front and filled with the real header,
    padded with spaces (which the format allows), when the push is whole. Compared
    with assembling tensors in memory and saving them afterwards this writes the bytes
    once, into page cache (tmpfs), instead of twice, once into fresh process memory.
    With `reuse` (a staged file no version needs any more) the bytes overwrite its pages,
    which tmpfs already holds: no first-touch page faults, about 4x faster than fresh pages.
    """

    def __init__(self, directory: Path, manifest: dict[str, TensorSpec], reuse: Path | None = None) -> None:
        self.path = directory / f"push-{uuid.uuid4().hex}.safetensors"
        self._room = _header_room(manifest)
        if reuse is not None:
            os.rename(reuse, self.path)
        self._file = open(self.path, "r+b" if reuse is not None else "wb")  # noqa: SIM115 (closed in finish/discard)
        self._file.seek(8 + self._room)
        self._entries: dict[str, dict] = {}
        self._offset = 0
        self._current: str | None = None

    def open_tensor(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int) -> None:
        self._entries[name] = {
            "dtype": push_dtype(dtype).safetensors,
            "shape": list(shape),
            "data_offsets": [self._offset, self._offset + nbytes],
        }
        self._current = name

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close_tensor(self) -> None:
        self._offset = self._entries[self._current]["data_offsets"][1]

    def finish(self) -> tuple[dict, Path]:
        header = json.dumps(self._entries, separators=(",", ":")).encode()
        if len(header) > self._room:  # cannot happen for names the manifest allows; checked anyway
            raise RuntimeError(f"safetensors header of {len(header)} bytes exceeds the {self._room} reserved")
        self._file.truncate(8 + self._room + self._offset)  # a reused file may be longer
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self._room) + header + b" " * (self._room - len(header)))
        self._file.close()
        return {}, self.path

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def _header_room(manifest: dict[str, TensorSpec]) -> int:
    """Bytes enough for the header of any push of manifest tensors, so that the data starts aligned."""
    entries = {
        name: {"dtype": "BF16", "shape": list(spec.shape), "data_offsets": [2**63, 2**63]}
        for name, spec in manifest.items()
    }
    size = len(json.dumps(entries, separators=(",", ":")).encode()) + 64
    return size + (-(8 + size)) % _ALIGN
