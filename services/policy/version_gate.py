"""Makes weight swaps atomic with respect to requests.

Generation holds a lease for its whole lifetime and reads the version once, at
the start; a swap waits until no lease is held (new requests queue behind it),
aborting stragglers after a drain timeout. So every sample is produced by exactly
one version, and the version it reports is the one that produced it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class VersionGate:
    def __init__(self, version: int = 0) -> None:
        self.version = version
        self.highest = version  # never handed out again, even after a rollback serves a lower version
        self.version_note = ""
        self.version_since = time.time()
        self._leases = 0
        self._waiting = 0
        self._swapping = False
        self._changed = asyncio.Condition()

    @property
    def active_leases(self) -> int:
        return self._leases

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def swapping(self) -> bool:
        return self._swapping

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[int]:
        """Holds off swaps while the body runs; yields the version serving it."""
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._swapping)
            finally:
                self._waiting -= 1
            self._leases += 1
            version = self.version
        try:
            yield version
        finally:
            async with self._changed:
                self._leases -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def swap(self, drain_timeout_s: float, abort_in_flight: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Exclusive section for loading weights: no request runs inside it."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._swapping)
            self._swapping = True
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._leases == 0), drain_timeout_s)
            except TimeoutError:
                await abort_in_flight()
                await self._changed.wait_for(lambda: self._leases == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._swapping = False
                self._changed.notify_all()

    def advance(self, note: str, version: int | None = None) -> int:
        """Serves new weights as `version` (default: above the highest so far); call inside `swap` once they are in place."""
        version = self.highest + 1 if version is None else version
        if version <= self.highest:
            raise ValueError(f"version {version} was already handed out (highest {self.highest})")
        self.highest = version
        return self.restore(version, note)

    def restore(self, version: int, note: str) -> int:
        """Serves earlier weights under their own number again; call inside `swap` once they are in place."""
        self.version = version
        self.version_note = note
        self.version_since = time.time()
        return self.version
