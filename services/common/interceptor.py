"""One server interceptor for every service: auth, integer range checks, error mapping, gRPC metrics.

Every request message passes `field_ranges.check_ranges` before its handler runs.
Handlers raise `ServiceError`s; this turns them into statuses, turns anything else
into INTERNAL (logged with its traceback and a reference, the server keeps running)
and counts every call by method and code with the py-grpc-prometheus metric names.
Exception text and server paths go only to admin callers.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from services.common.errors import ServiceError
from services.common.field_ranges import check_ranges
from services.common.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED
from services.common.security import TokenAuthenticator
from services.common.tenancy import authenticated_tenant

log = logging.getLogger(__name__)


class _CallRecord:
    """Tracks one call's method, type and final status for the metrics."""

    def __init__(self, full_method: str, rpc_type: str) -> None:
        _, service, method = full_method.split("/")
        self.labels = {"grpc_service": service, "grpc_method": method, "grpc_type": rpc_type}
        self.started = time.perf_counter()
        GRPC_STARTED.labels(**self.labels).inc()

    def finish(self, code: grpc.StatusCode) -> None:
        GRPC_HANDLED.labels(**self.labels, grpc_code=code.name).inc()
        GRPC_HANDLING_SECONDS.labels(**self.labels).observe(time.perf_counter() - self.started)


# An absolute path of two or more components whose first has no dot (so /rlhf.v1.Service/Method stays).
_SERVER_PATH = re.compile(r"(?<![\w:/.])/[\w@+-]+/(?:[\w.@+-]+/)*[\w.@+-]*")


def redact_paths(text: str) -> str:
    """`text` with absolute server file paths replaced by '<server path>'."""
    return _SERVER_PATH.sub("<server path>", text)


async def _fail(context: grpc.aio.ServicerContext, record: _CallRecord, exc: BaseException, detailed: bool) -> None:
    """Aborts the call with `exc`'s status. Only `detailed` (admin) callers see internal exception text
    and server file paths: to anyone else they map the server's insides, so they get the log's reference."""
    if isinstance(exc, ServiceError):
        record.finish(exc.code)
        await context.abort(exc.code, str(exc) if detailed else redact_paths(str(exc)))
    reference = uuid.uuid4().hex[:12]
    log.exception("unhandled error in %s (ref %s)", record.labels["grpc_method"], reference)
    record.finish(grpc.StatusCode.INTERNAL)
    if detailed:
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {reference}): {type(exc).__name__}: {exc}")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {reference} in the server log)")


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if code in (None, 0) else grpc.StatusCode.UNKNOWN


def _authorize(auth: TokenAuthenticator | None, method: str, context: grpc.aio.ServicerContext) -> bool:
    """Authenticates the caller; True if it may see internal error details (admin scope, or no auth at all,
    where every caller may call every admin RPC anyway: bound to loopback or started with --insecure)."""
    if auth is None:
        return True
    principal = auth.authenticate(method, context.invocation_metadata())
    if principal is None:
        return False
    authenticated_tenant.set(principal.tenant)
    return "admin" in principal.scopes


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream whose every message has passed the integer range checks."""
    async for request in requests:
        check_ranges(request)
        yield request


def _checked_request(request_or_iterator: Any, streamed: bool) -> Any:
    if streamed:
        return _checked(request_or_iterator)
    check_ranges(request_or_iterator)
    return request_or_iterator


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, rpc_type: str, auth: TokenAuthenticator | None
) -> Callable[..., Awaitable[Any]]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        record = _CallRecord(method, rpc_type)
        detailed = False
        try:
            detailed = _authorize(auth, method, context)
            request = _checked_request(request_or_iterator, rpc_type == "client_stream")
            response = await behavior(request, context)
        except AbortError:
            record.finish(_code_of(context))
            raise
        except Exception as exc:  # noqa: BLE001 - the point of this interceptor
            await _fail(context, record, exc, detailed)
        else:
            record.finish(_code_of(context))
            return response

    return handler


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str, rpc_type: str, auth: TokenAuthenticator | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        record = _CallRecord(method, rpc_type)
        detailed = False
        try:
            detailed = _authorize(auth, method, context)
            request = _checked_request(request_or_iterator, rpc_type == "bidi_stream")
            async for response in behavior(request, context):
                yield response
        except AbortError:
            record.finish(_code_of(context))
            raise
        except Exception as exc:  # noqa: BLE001
            await _fail(context, record, exc, detailed)
        else:
            record.finish(_code_of(context))

    return handler


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authentication (when an authenticator is given), error mapping and metrics."""

    def __init__(self, authenticator: TokenAuthenticator | None = None) -> None:
        self.auth = authenticator

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        common = dict(
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, "unary", self.auth), **common
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, "client_stream", self.auth), **common
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, "server_stream", self.auth), **common
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, "bidi_stream", self.auth), **common
        )
