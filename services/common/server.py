"""The one server bootstrap: aio server, health, reflection, metrics, interceptor, signals.

Every service's `__main__` builds its servicers and calls `run_server`. Health
reports NOT_SERVING until `startup` finishes (e.g. the engine has loaded) and again
while draining on SIGTERM/SIGINT, so load balancers stop sending work first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import option
from services.common.interceptor import ServiceInterceptor
from services.common.metrics import serve_metrics
from services.common.security import TokenAuthenticator, server_credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    """Network settings every service shares."""

    host: str = option("127.0.0.1", "Address to bind the gRPC server to (0.0.0.0 for all interfaces).")
    port: int = option(50051, "gRPC port.")
    metrics_port: int = option(9100, "Prometheus /metrics HTTP port (0 disables it).")
    max_message_mb: int = option(64, "Largest gRPC message accepted or sent, in MiB.")
    grace_s: float = option(30.0, "Seconds in-flight RPCs get to finish on shutdown before they are cancelled.")
    shutdown_delay_s: float = option(
        1.0,
        "On SIGTERM, seconds health reports NOT_SERVING while still serving (so balancers move away) before the drain starts.",
    )
    log_level: str = option("INFO", "Python logging level.")
    auth_tokens_file: str = option(
        "",
        "TOML file declaring bearer tokens, scopes and tenants (see services/common/security.py). Empty: no authentication.",
    )
    public_health: bool = option(True, "Serve health checks and reflection without a token.")
    tls_cert_file: str = option("", "PEM certificate chain; with tls_key_file, the server speaks TLS only.")
    tls_key_file: str = option("", "PEM private key for tls_cert_file.")
    tls_client_ca_file: str = option(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."
    )
    insecure: bool = option(
        False,
        "Allow binding a non-loopback address without authentication (no auth_tokens_file and no tls_client_ca_file): "
        "anyone who reaches the port may then push weights, roll back and read all feedback. Off: such a start is refused.",
    )


@dataclass(frozen=True)
class Registration:
    """A servicer and how to add it: `add(servicer, server)` from the generated *_pb2_grpc."""

    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]
    full_name: str


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class InsecureBinding(ValueError):
    """A non-loopback bind without authentication that `--insecure` did not explicitly allow."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServingConfig) -> None:
    """Refuses a server that anyone on the network could drive (admin RPCs included) unless asked to.

    Authentication is a bearer-token file or mutual TLS; loopback needs none (only this host reaches it).
    """
    authenticated = bool(config.auth_tokens_file or config.tls_client_ca_file)
    if authenticated or is_loopback(config.host):
        return
    if not config.insecure:
        raise InsecureBinding(
            f"refusing to serve on {config.host}:{config.port} without authentication: give --auth-tokens-file "
            "(bearer tokens with scopes, see services/common/security.py) or --tls-client-ca-file, bind "
            "--host 127.0.0.1, or pass --insecure to allow anyone who reaches the port to call every RPC"
        )
    log.warning(
        "--insecure: no authentication on %s:%d, anyone who reaches it can call every RPC", config.host, config.port
    )


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Message limits (the 4 MiB default is too small for batches and weight chunks)."""
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


async def run_server(
    config: ServingConfig,
    registrations: Sequence[Registration],
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then drains for `config.grace_s` and returns.

    Exits with status 2 (one clear log line) before binding anything if `check_exposure` refuses the config.
    """
    try:
        check_exposure(config)
    except InsecureBinding as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    authenticator = None
    if config.auth_tokens_file:
        authenticator = TokenAuthenticator.from_file(config.auth_tokens_file, config.public_health)
        log.info("authentication on: bearer tokens from %s", config.auth_tokens_file)
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(authenticator)], options=channel_options(config.max_message_mb)
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.full_name for r in registrations]
    for registration in registrations:
        registration.add(registration.servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    async def set_health(status: int) -> None:
        for name in ("", *names):
            await health_servicer.set(name, status)

    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{config.host}:{config.port}"
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    if config.tls_cert_file:
        bound = server.add_secure_port(
            address, server_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        )
        log.info("TLS on%s", " (clients must present certificates)" if config.tls_client_ca_file else "")
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC server to {address}")
    serve_metrics(config.host, config.metrics_port)
    await server.start()
    log.info("gRPC server listening on %s (services: %s)", address, ", ".join(names))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if startup is not None:
            start_task = asyncio.ensure_future(startup())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if start_task in done:
                start_task.result()
            else:
                start_task.cancel()
        if not stop.is_set():
            await set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving")
            await stop.wait()
        await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info(
            "shutting down: NOT_SERVING for %.1f s, then draining for up to %.1f s",
            config.shutdown_delay_s,
            config.grace_s,
        )
        await asyncio.sleep(config.shutdown_delay_s)
        await server.stop(config.grace_s)
    finally:
        if shutdown is not None:
            await shutdown()
    log.info("stopped")
