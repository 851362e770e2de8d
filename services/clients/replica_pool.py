"""Client-side load balancing over replicas of one service: round-robin, failover, bounded retries.

A replica that answers UNAVAILABLE leaves the rotation at once and the call moves on
to the next one; a call waits (exponential backoff with jitter) only when no replica
is in rotation, and then for at most `wait_s` seconds, asking the owner's `recover`
hook each time to bring replicas back (a health probe, a catch-up push).
Addresses are `host:port` lists; `dns:///name:port` expands to every address the name
resolves to, which is how a Kubernetes headless Service lists its pods.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
R = TypeVar("R")


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 10.0) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) x min(cap, base * 2^attempt)."""
    return min(cap_s, base_s * 2.0**attempt) * (0.5 + random.random())


def with_retries(call: Callable[[], R], what: str, retries: int, budget_s: float = 0.0) -> R:
    """Retries UNAVAILABLE / RESOURCE_EXHAUSTED with backoff and jitter.

    Gives up once it has retried `retries` times *and* `budget_s` seconds have
    passed, whichever allows more; other status codes are raised at once.
    """
    started = time.monotonic()
    for attempt in itertools.count():
        try:
            return call()
        except grpc.RpcError as exc:
            delay = backoff_s(attempt)
            if exc.code() not in RETRYABLE or (attempt >= retries and time.monotonic() - started + delay > budget_s):
                raise
            log.warning(
                "%s failed with %s (%s); retry %d in %.1f s", what, exc.code().name, exc.details(), attempt + 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def split_addresses(spec: str | Iterable[str]) -> list[str]:
    """`a:1,b:2` or a list -> addresses; `dns:///name:port` -> one per resolved address."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    addresses: list[str] = []
    for item in items:
        if item.startswith("dns:///"):
            host, port = item[len("dns:///") :].rsplit(":", 1)
            resolved = sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
            addresses += [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in resolved]
        else:
            addresses.append(item)
    if not addresses:
        raise ValueError(f"no service address in {spec!r}")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"duplicate replica address in {spec!r}")
    return addresses


class Member(Protocol):
    name: str
    in_rotation: bool
    reason: str


M = TypeVar("M", bound=Member)


class ReplicaPool(Generic[M]):
    """The members of one service and which of them take traffic now."""

    def __init__(
        self, service: str, members: list[M], wait_s: float, recover: Callable[[], None] = lambda: None
    ) -> None:
        if not members:
            raise ValueError(f"{service}: no replicas")
        self.service, self.members, self.wait_s, self.recover = service, members, wait_s, recover
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def live(self) -> list[M]:
        return [m for m in self.members if m.in_rotation]

    def take_out(self, member: M, reason: str) -> None:
        with self._lock:
            if member.in_rotation:
                log.warning("%s: %s leaves the rotation: %s", self.service, member.name, reason)
            member.in_rotation, member.reason = False, reason

    def put_back(self, member: M) -> None:
        with self._lock:
            if not member.in_rotation:
                log.info("%s: %s is back in rotation", self.service, member.name)
            member.in_rotation, member.reason = True, ""

    def pick(self, prefer: int | None = None) -> M | None:
        live = self.live()
        if not live:
            return None
        index = next(self._turn) if prefer is None else prefer
        return live[index % len(live)]

    def call(self, fn: Callable[[M], R], what: str, prefer: int | None = None) -> R:
        """`fn(member)` on a live member; fails over on UNAVAILABLE, waits at most `wait_s` with none live."""
        deadline = time.monotonic() + self.wait_s
        for attempt in itertools.count():
            member = self.pick(prefer)
            if member is None:
                self.recover()
                member = self.pick(prefer)
            if member is not None:
                try:
                    return fn(member)
                except grpc.RpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        self.take_out(member, f"{what}: {exc.code().name} ({exc.details()})")
                    if self.live() and exc.code() == grpc.StatusCode.UNAVAILABLE:
                        prefer = None
                        continue  # fail over to the next replica without waiting
            delay = backoff_s(attempt)
            if time.monotonic() + delay > deadline:
                reasons = "; ".join(f"{m.name}: {m.reason}" for m in self.members if not m.in_rotation)
                raise ReplicasUnavailable(
                    f"{self.service}: {what} found no replica to serve it within {self.wait_s:.0f} s ({reasons})"
                )
            log.warning("%s: %s waits %.1f s for a replica (attempt %d)", self.service, what, delay, attempt + 1)
            time.sleep(delay)
        raise AssertionError("unreachable")


class ReplicasUnavailable(RuntimeError):
    """No replica of a service could take a call within the wait budget."""
