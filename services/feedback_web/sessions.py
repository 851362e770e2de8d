"""Server-side sessions behind a signed cookie, each with its CSRF token.

The cookie carries only a random session id, signed (itsdangerous) so a forged or
expired id is rejected before any lookup; the bearer token stays on the server. A
session starts anonymous (so the sign-in form has a CSRF token too) and gets a new
id when someone signs in (no session fixation). Sessions live in memory: a restart
signs everyone out, which is acceptable for a labelling page.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.feedback_web.accounts import Caller

COOKIE_NAME = "rlhf_feedback_session"
CSRF_FIELD = "csrf_token"


@dataclass
class Session:
    session_id: str
    csrf_token: str
    created: float
    caller: Caller | None = None
    # Per-page state (shown pairs, prefetched work, queues): owned by the app module that uses it.
    state: dict[str, Any] = field(default_factory=dict)

    def csrf_ok(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(self.csrf_token, submitted)


class SessionStore:
    def __init__(self, secret: str, max_age_s: int, max_sessions: int = 10000) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="rlhf-feedback-web-session")
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    def new(self) -> Session:
        self._expire()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time())
        self._sessions[session.session_id] = session
        return session

    def sign_in(self, old: Session, caller: Caller) -> Session:
        """A fresh session (new id and CSRF token) for `caller`; the anonymous one ends."""
        self.end(old)
        session = self.new()
        session.caller = caller
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)

    def cookie_value(self, session: Session) -> str:
        return self._signer.dumps(session.session_id)

    def from_cookie(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            session_id = self._signer.loads(value, max_age=self.max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        session = self._sessions.get(session_id)
        if session is None or time.time() - session.created > self.max_age_s:
            return None
        return session

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if now - s.created > self.max_age_s]:
            del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:  # oldest first: dicts keep insertion order
            del self._sessions[next(iter(self._sessions))]
