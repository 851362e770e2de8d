"""Who is calling: the tenant a request is accounted to (quotas, metrics, logs).

Callers name themselves in the `x-rlhf-tenant` metadata key; without it a request
belongs to the `default` tenant. When authentication is on, the token's tenant wins
(see services/common/auth.py), so a caller cannot spend another tenant's quota.
"""

from __future__ import annotations

import contextvars
import re

import grpc

from services.common.errors import InvalidArgument

TENANT_METADATA_KEY = "x-rlhf-tenant"
DEFAULT_TENANT = "default"
_VALID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Set by the auth interceptor for the duration of a call when a token names a tenant.
authenticated_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("authenticated_tenant", default=None)


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The calling tenant; INVALID_ARGUMENT for a malformed name."""
    from_token = authenticated_tenant.get()
    if from_token:
        return from_token
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY:
            if not _VALID.match(value):
                raise InvalidArgument(f"{TENANT_METADATA_KEY} must be 1-64 of [A-Za-z0-9._-], got {value!r}")
            return value
    return DEFAULT_TENANT
