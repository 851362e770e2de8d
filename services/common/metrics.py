"""Metrics every server exports, and the HTTP endpoint Prometheus scrapes.

gRPC names follow py-grpc-prometheus so existing dashboards and alerts apply.
Service-specific metrics live in each service's own `metrics.py`.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

_GRPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")

GRPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by status code.", (*_GRPC_LABELS, "grpc_code")
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, in seconds.",
    _GRPC_LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def serve_metrics(host: str, port: int) -> None:
    """Starts the /metrics HTTP endpoint in a background thread (port 0 disables it)."""
    if port <= 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics endpoint listening on http://%s:%d/metrics", host, port)
