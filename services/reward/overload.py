"""RESOURCE_EXHAUSTED with a retry hint: what an overloaded shared service answers.

A shared reward service must shed load instead of queueing without bound or falling
over. Whoever refuses work (a tenant quota, a full model queue) raises `Overloaded`
with an estimate of when trying again makes sense; the servicer copies it into the
`retry-after-ms` trailing metadata key, and the message says it in words too.
"""

from __future__ import annotations

import math

from services.common.errors import ResourceExhausted

RETRY_AFTER_KEY = "retry-after-ms"


class Overloaded(ResourceExhausted):
    """Refused for now; `retry_after_ms` is when a retry is likely to be accepted."""

    def __init__(self, message: str, retry_after_ms: float) -> None:
        self.retry_after_ms = max(1, math.ceil(retry_after_ms))
        super().__init__(f"{message}; retry after ~{self.retry_after_ms} ms")
