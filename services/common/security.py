"""Authentication (bearer tokens with scopes) and TLS for servers and clients.

Server side: tokens are declared in a TOML file (never in code), each with scopes
and a tenant:

    [[tokens]]
    name = "trainer-1"            # shown in logs, never the token itself
    token_env = "TRAINER_TOKEN"   # read the secret from this environment variable...
    # token_file = "/run/secrets/trainer"   # ...or from this file (first line)
    scopes = ["generate", "score", "admin"]
    tenant = "research"           # quotas and logs are accounted to it

Every RPC needs one scope (METHOD_SCOPES; anything unlisted needs `admin`).
A missing or unknown token is UNAUTHENTICATED, a token without the scope
PERMISSION_DENIED. Tokens are compared as SHA-256 digests with
`hmac.compare_digest`, so timing reveals nothing about them. Health checks and
reflection stay open unless `public_health` is off.

Client side: `ClientSecurity` carries a token and TLS files; `from_env()` reads
RLHF_CLIENT_TOKEN (or RLHF_CLIENT_TOKEN_FILE), RLHF_CLIENT_TLS_CA_FILE,
RLHF_CLIENT_TLS_CERT_FILE, RLHF_CLIENT_TLS_KEY_FILE, RLHF_CLIENT_TLS_SERVER_NAME.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.errors import ServiceError

SCOPES = ("generate", "score", "feedback", "admin")

METHOD_SCOPES: dict[str, dict[str, str]] = {
    "rlhf.v1.PolicyService": {
        "Generate": "generate",
        "GenerateStream": "generate",
        "GetStatus": "generate",
        "PushWeights": "admin",
        "Rollback": "admin",
        "InitWeightTransfer": "admin",
        "BeginNcclPush": "admin",
        "CommitNcclPush": "admin",
    },
    "rlhf.v1.RewardService": {"Score": "score", "ListModels": "score", "Compare": "score", "GetModelStats": "score"},
    "rlhf.v1.FeedbackService": {
        "SubmitFeedback": "feedback",
        # Gold answers grade raters, and the reads see every tenant's traffic: admin only.
        "SubmitGoldFeedback": "admin",
        "ExportFeedback": "admin",
        "ListPreferences": "admin",
        "ListRatings": "admin",
        "ListPrompts": "admin",
        "GetStats": "admin",
    },
}
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


def required_scope(full_method: str) -> str | None:
    """Scope needed by `/package.Service/Method`; None for public services."""
    _, service, method = full_method.split("/")
    if service in PUBLIC_SERVICES:
        return None
    return METHOD_SCOPES.get(service, {}).get(method, "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    tenant: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _read_secret(entry: dict, where: str) -> str:
    if "token_env" in entry:
        value = os.environ.get(entry["token_env"], "")
        if not value:
            raise ValueError(f"{where}: environment variable {entry['token_env']} is empty or unset")
        return value.strip()
    if "token_file" in entry:
        return Path(entry["token_file"]).read_text().splitlines()[0].strip()
    raise ValueError(f"{where}: give token_env or token_file (tokens never live in the config itself)")


class TokenAuthenticator:
    """Maps bearer tokens to principals and checks scopes."""

    def __init__(self, principals: list[tuple[str, Principal]], public_health: bool = True) -> None:
        if not principals:
            raise ValueError("auth is on but no tokens are declared")
        self._principals = [(_digest(token), principal) for token, principal in principals]
        self.public_health = public_health

    @classmethod
    def from_file(cls, path: str, public_health: bool = True) -> TokenAuthenticator:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        entries = []
        for i, entry in enumerate(data.get("tokens", [])):
            where = f"{path}: tokens[{i}]"
            unknown = set(entry) - {"name", "token_env", "token_file", "scopes", "tenant"}
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            scopes = frozenset(entry.get("scopes", []))
            if not scopes or not scopes <= set(SCOPES):
                raise ValueError(f"{where}: scopes must be a non-empty subset of {list(SCOPES)}")
            principal = Principal(entry.get("name", f"token-{i}"), scopes, entry.get("tenant", "default"))
            entries.append((_read_secret(entry, where), principal))
        return cls(entries, public_health)

    def authenticate(self, full_method: str, metadata) -> Principal | None:
        """The caller's principal; raises Unauthenticated / PermissionDenied."""
        scope = required_scope(full_method)
        if scope is None and self.public_health:
            return None
        token = ""
        for key, value in metadata or ():
            if key == "authorization" and value.lower().startswith("bearer "):
                token = value[7:].strip()
        if not token:
            raise Unauthenticated("missing bearer token: send metadata 'authorization: Bearer <token>'")
        digest = _digest(token)
        found = None
        for known, principal in self._principals:  # no early exit: constant work per call
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        if scope is not None and scope not in found.scopes:
            raise PermissionDenied(f"token '{found.name}' lacks scope '{scope}' needed by {full_method}")
        return found


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS for a server; with a client CA, clients must present a certificate it signed (mTLS)."""
    pair = (Path(key_file).read_bytes(), Path(cert_file).read_bytes())
    if client_ca_file:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=Path(client_ca_file).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])


@dataclass(frozen=True)
class ClientSecurity:
    token: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_server_name: str = ""

    @classmethod
    def from_env(cls, prefix: str = "RLHF_CLIENT_") -> ClientSecurity:
        token = os.environ.get(prefix + "TOKEN", "")
        token_file = os.environ.get(prefix + "TOKEN_FILE", "")
        if not token and token_file:
            token = Path(token_file).read_text().splitlines()[0].strip()
        return cls(
            token=token,
            tls_ca_file=os.environ.get(prefix + "TLS_CA_FILE", ""),
            tls_cert_file=os.environ.get(prefix + "TLS_CERT_FILE", ""),
            tls_key_file=os.environ.get(prefix + "TLS_KEY_FILE", ""),
            tls_server_name=os.environ.get(prefix + "TLS_SERVER_NAME", ""),
        )

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        key = Path(self.tls_key_file).read_bytes() if self.tls_key_file else None
        cert = Path(self.tls_cert_file).read_bytes() if self.tls_cert_file else None
        return grpc.ssl_channel_credentials(Path(self.tls_ca_file).read_bytes(), key, cert)


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call (works on plaintext channels too)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details, metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


def secure_channel(address: str, security: ClientSecurity, options: list) -> grpc.Channel:
    """A blocking channel with TLS if configured and the token attached to every call."""
    if security.tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", security.tls_server_name)]
    if security.tls:
        channel = grpc.secure_channel(address, security.channel_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


class _AioBearerToken(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """The asyncio twin of `_BearerToken`."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


def secure_aio_channel(address: str, security: ClientSecurity, options: list) -> grpc.aio.Channel:
    if security.tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", security.tls_server_name)]
    interceptors = [_AioBearerToken(security.token)] if security.token else None
    if security.tls:
        return grpc.aio.secure_channel(
            address, security.channel_credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
