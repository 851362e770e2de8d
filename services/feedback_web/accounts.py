"""Who is signing in: a bearer token looked up in the services' own token file.

The web app keeps no user list of its own. A person signs in with the token the
services would accept from them; the token file's entry names the rater (its
`name`), the tenant and the scopes. Lookup reuses the services' authenticator, so a
token is accepted here exactly when the FeedbackService would accept its
SubmitFeedback.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.security import (
    PermissionDenied,
    TokenAuthenticator,
    Unauthenticated,
)

SUBMIT_METHOD = "/rlhf.v1.FeedbackService/SubmitFeedback"


@dataclass(frozen=True)
class Caller:
    """A signed-in person: the identity their judgements are stored under, and the token sent with them."""

    rater_id: str
    tenant: str
    scopes: frozenset[str]
    token: str

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"), ("x-rlhf-tenant", self.tenant))


class SignInRefused(Exception):
    """The token is unknown or may not submit feedback (the message says which)."""


class Accounts:
    def __init__(self, authenticator: TokenAuthenticator) -> None:
        self._authenticator = authenticator

    @classmethod
    def from_file(cls, path: str) -> Accounts:
        if not path:
            raise ValueError("token_file is required: it maps sign-in tokens to rater ids (the services' token file)")
        return cls(TokenAuthenticator.from_file(path, public_health=True))

    def sign_in(self, token: str) -> Caller:
        token = token.strip()
        if not token:
            raise SignInRefused("enter your token")
        try:
            principal = self._authenticator.authenticate(SUBMIT_METHOD, [("authorization", f"Bearer {token}")])
        except Unauthenticated:
            raise SignInRefused("unknown token") from None
        except PermissionDenied:
            raise SignInRefused("this token may not submit feedback (it lacks the 'feedback' scope)") from None
        return Caller(principal.name, principal.tenant, principal.scopes, token)
