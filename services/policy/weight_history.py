"""The weight versions a policy server can go back to (the `Rollback` RPC).

A version is described by where each of its tensors lives: a shard of the start
checkpoint (version 0) or a retained push file. A push, complete or partial,
records the new version as the previous one's sources overlaid with the pushed
names, so partial pushes cost no full copies. Restoring version v loads, from
v's sources, only the tensors whose source differs from the version serving now.

The current version plus the `keep` most recently served others are retained;
a push file is deleted as soon as no retained version reads from it. The start
checkpoint is the model directory and is never deleted (its version may still
drop out of the restorable set).
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


class Origin(enum.IntEnum):
    """How a version came to serve most recently (the values of rlhf.v1.VersionOrigin)."""

    CHECKPOINT = 1
    PUSH = 2
    ROLLBACK = 3


@dataclass(frozen=True)
class RetainedVersion:
    version: int
    note: str
    applied_at: float
    sources: dict[str, Path]  # tensor name -> file holding its value in this version
    push_id: str = ""  # PushBegin.push_id of the push that made it
    digest: bytes = b""  # digest of the pushed weights under `checksum`
    origin: Origin = Origin.CHECKPOINT
    checksum: str = ""  # algorithm of `digest` ("xxh3_128", "sha256"; "" for the checkpoint)


class UnknownVersion(LookupError):
    """The version is not retained (never applied here, or no longer kept)."""


def checkpoint_sources(model_dir: str | Path) -> dict[str, Path]:
    """Which shard of the start checkpoint holds each tensor."""
    sources: dict[str, Path] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            sources.update(dict.fromkeys(handle.keys(), path))
    if not sources:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    return sources


class WeightHistory:
    """Book-keeping only: the servicer loads the files and deletes the ones returned as unneeded."""

    def __init__(self, start_sources: dict[str, Path], keep: int, started_at: float | None = None) -> None:
        if keep < 0:
            raise ValueError(f"keep_versions must be >= 0, got {keep}")
        self.keep = keep
        self._protected = set(start_sources.values())
        self.current = RetainedVersion(0, "", time.time() if started_at is None else started_at, dict(start_sources))
        self._retained: OrderedDict[int, RetainedVersion] = OrderedDict()  # most recently served last
        self._files: set[Path] = set()  # push files kept for retained versions

    def restorable(self) -> list[RetainedVersion]:
        """Versions a rollback can restore, most recently served first."""
        return list(reversed(self._retained.values()))

    def previous(self) -> int | None:
        """The version that served before the current one, if still retained."""
        return next(reversed(self._retained), None)

    def plan_restore(self, version: int, full: bool = False) -> dict[str, Path]:
        """Tensor name -> file to load to serve `version` (all of them with `full`, e.g. after a failed load)."""
        if version == self.current.version:
            target = self.current
        elif version in self._retained:
            target = self._retained[version]
        else:
            raise UnknownVersion(version)
        if not target.sources:  # pushed over NCCL: its bytes are nowhere on this server
            if version == self.current.version and not full:
                return {}
            raise UnknownVersion(version)
        if full:
            return dict(target.sources)
        return {name: path for name, path in target.sources.items() if self.current.sources.get(name) != path}

    def record_push(
        self,
        version: int,
        note: str,
        path: Path,
        names: list[str],
        push_id: str = "",
        digest: bytes = b"",
        checksum: str = "sha256",
    ) -> list[Path]:
        """The pushed file now serves as `version`; returns files no retained version reads any more."""
        sources = {**self.current.sources, **dict.fromkeys(names, path)}
        self._retire_current()
        self.current = RetainedVersion(version, note, time.time(), sources, push_id, digest, Origin.PUSH, checksum)
        return self._trim()

    def record_unretained(self, version: int, note: str, push_id: str = "", sha256: bytes = b"") -> list[Path]:
        """`version` serves from tensors this server never held (an NCCL push): it cannot be restored later,
        and restoring an earlier version reloads all of that version's tensors. Returns files no longer needed."""
        self._retire_current()
        self.current = RetainedVersion(version, note, time.time(), {}, push_id, sha256, Origin.PUSH, "sha256")
        return self._trim()

    def record_restore(self, version: int) -> list[Path]:
        """`version` (from plan_restore) serves again; returns files no longer needed."""
        if version == self.current.version:
            return []
        target = self._retained.pop(version)
        self._retire_current()
        self.current = replace(target, origin=Origin.ROLLBACK)
        return self._trim()

    def _retire_current(self) -> None:
        self._retained.pop(self.current.version, None)
        if not self.current.sources:  # unretained (NCCL) versions are never restorable
            return
        self._retained[self.current.version] = self.current

    def _trim(self) -> list[Path]:
        while len(self._retained) > self.keep:
            self._retained.popitem(last=False)
        needed = {p for v in self._retained.values() for p in v.sources.values()}
        if self.keep:  # the current version becomes restorable once another one serves
            needed |= set(self.current.sources.values())
        pushed = {p for p in self.current.sources.values() if p not in self._protected} | self._files
        self._files = {p for p in pushed if p in needed}
        return sorted(pushed - self._files)


def write_restore_file(plan: dict[str, Path], directory: Path) -> Path:
    """Gathers the planned tensors from their files into one safetensors file the engine workers load."""
    tensors = {}
    by_file: dict[Path, list[str]] = {}
    for name, path in plan.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in names:
                tensors[name] = handle.get_tensor(name)
    target = directory / f"restore-{uuid.uuid4().hex}.safetensors"
    save_file(tensors, str(target))
    return target
