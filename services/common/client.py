"""Client-side helpers: channels with the right limits, waiting on health, the loopback guard."""

from __future__ import annotations

import ipaddress
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.security import ClientSecurity, secure_aio_channel, secure_channel
from services.common.server import channel_options


def open_channel(address: str, max_message_mb: int = 64, security: ClientSecurity | None = None) -> grpc.Channel:
    """A blocking channel to `host:port` with raised message limits.

    Without `security`, the token and TLS files come from RLHF_CLIENT_* variables
    (see services/common/security.py), so every tool picks them up the same way.
    """
    security = ClientSecurity.from_env() if security is None else security
    return secure_channel(address, security, channel_options(max_message_mb))


def open_aio_channel(
    address: str, max_message_mb: int = 64, security: ClientSecurity | None = None
) -> grpc.aio.Channel:
    security = ClientSecurity.from_env() if security is None else security
    return secure_aio_channel(address, security, channel_options(max_message_mb))


def wait_until_serving(
    address: str, timeout_s: float, service: str = "", is_alive=lambda: True, security: ClientSecurity | None = None
) -> None:
    """Polls the standard health service until SERVING; raises TimeoutError otherwise.

    `is_alive` lets a caller that started the server stop waiting as soon as the
    process has died instead of sitting out the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    with open_channel(address, security=security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not is_alive():
                raise RuntimeError(f"server for {address} exited while starting")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last_error = exc.code().name
            time.sleep(0.5)
    raise TimeoutError(f"{address} not SERVING after {timeout_s:.0f} s (last: {last_error})")


def require_loopback(address: str) -> None:
    """Refuses a host:port that resolves to anything but loopback (simulated load stays on this machine)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {address!r}: {exc}") from exc
    outside = sorted(a for a in resolved if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise ValueError(f"{address!r} resolves to {outside}: the simulator only sends traffic to loopback addresses")
