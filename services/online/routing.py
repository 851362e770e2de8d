"""Which replica a simulated user talks to: a sticky canary split by user id."""

from __future__ import annotations

import hashlib

STABLE, CANARY = "stable", "canary"


class CanaryRouter:
    """Sends a fixed `fraction` of users (not requests) to the canary, the same users every time.

    Sticky per user, as a real canary split is, so one user's feedback describes one
    version and a user never sees the canary flip-flop between requests.
    """

    def __init__(self, fraction: float, salt: str = "canary") -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"canary fraction must be in [0, 1], got {fraction}")
        self.fraction, self.salt = fraction, salt

    def route(self, user_id: str) -> str:
        digest = hashlib.sha256(f"{self.salt}\0{user_id}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        return CANARY if position < self.fraction else STABLE
