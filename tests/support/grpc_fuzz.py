"""Drive a real in-process gRPC server with requests built from the protos' descriptors alone.

`serve_in_thread` runs servicers behind the services' own interceptor on a loopback
port (its own event loop in a thread), and `requests_for` is a hypothesis strategy
that fills every field of a request type with the extreme values of its type: the
fuzzer knows nothing of what a field means, as an outside caller would not.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from services.common.interceptor import ServiceInterceptor
from services.common.security import TokenAuthenticator

F = FieldDescriptor
EXTREMES: dict[int, list[Any]] = {
    F.TYPE_UINT64: [0, 1, 2**63 - 1, 2**63, 2**64 - 1],
    F.TYPE_FIXED64: [0, 1, 2**63 - 1, 2**63, 2**64 - 1],
    F.TYPE_INT64: [-(2**63), -1, 0, 1, 2**63 - 1],
    F.TYPE_SINT64: [-(2**63), -1, 0, 1, 2**63 - 1],
    F.TYPE_SFIXED64: [-(2**63), -1, 0, 1, 2**63 - 1],
    F.TYPE_UINT32: [0, 1, 2**31, 2**32 - 1],
    F.TYPE_FIXED32: [0, 1, 2**31, 2**32 - 1],
    F.TYPE_INT32: [-(2**31), -1, 0, 1, 2**31 - 1],
    F.TYPE_SINT32: [-(2**31), -1, 0, 1, 2**31 - 1],
    F.TYPE_SFIXED32: [-(2**31), -1, 0, 1, 2**31 - 1],
    F.TYPE_DOUBLE: [0.0, -1.0, 1e308, -1e308, math.inf, -math.inf, math.nan],
    F.TYPE_FLOAT: [0.0, -1.0, 3e38, math.inf, -math.inf, math.nan],
    F.TYPE_BOOL: [False, True],
    F.TYPE_BYTES: [b"", b"\x00", b"\xff" * 64],
}


def _scalar(field: FieldDescriptor, texts: Sequence[str]) -> st.SearchStrategy:
    if field.type == F.TYPE_STRING:
        return st.sampled_from(list(texts)) | st.text(max_size=40)
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from([*known, -1, max(known) + 1, 2**31 - 1, -(2**31)])
    return st.sampled_from(EXTREMES[field.type])


def _fill(cls: type, draw: Callable, texts: Sequence[str], depth: int) -> Any:
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        if field.type == F.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            sub = message_factory.GetMessageClass(field.message_type)
            if repeated:
                for _ in range(draw(st.integers(0, 3))):
                    getattr(message, field.name).add().CopyFrom(_fill(sub, draw, texts, depth + 1))
            else:
                getattr(message, field.name).CopyFrom(_fill(sub, draw, texts, depth + 1))
        elif repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field, texts), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field, texts)))
    return message


def requests_for(cls: type, texts: Sequence[str] = ("", "x")) -> st.SearchStrategy:
    """Messages of type `cls` whose fields (recursively) take their type's extreme values."""
    return st.composite(lambda draw: _fill(cls, draw, texts, 0))()


Registrations = Sequence[tuple[Any, Callable, str]] | Callable[[], Awaitable[Sequence[tuple[Any, Callable, str]]]]


class InProcessServer:
    """A grpc.aio server with the services' interceptor, running in a thread; `.channel` is a blocking client."""

    def __init__(self, registrations: Registrations, authenticator: TokenAuthenticator | None = None) -> None:
        self._authenticator = authenticator
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server, port = self._run(self._start(registrations))
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.address)

    def run(self, coroutine):
        """Runs `coroutine` on the server's event loop and returns its result."""
        return self._run(coroutine)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    async def _start(self, registrations: Registrations):
        if callable(registrations):  # built inside the server's loop (servicers that own asyncio state)
            registrations = await registrations()
        server = grpc.aio.server(interceptors=[ServiceInterceptor(self._authenticator)])
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for servicer, add, _ in registrations:
            add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, port

    def call(self, service: Any, method_name: str, request: Any, timeout: float = 20.0) -> grpc.StatusCode:
        """Calls `/service/method` with `request` (streams get it as their one message); returns the status code."""
        method = service.methods_by_name[method_name]
        path = f"/{service.full_name}/{method.name}"
        reply_cls = message_factory.GetMessageClass(method.output_type)
        kwargs = {"request_serializer": type(request).SerializeToString, "response_deserializer": reply_cls.FromString}
        try:
            if method.client_streaming and method.server_streaming:
                list(self.channel.stream_stream(path, **kwargs)(iter([request]), timeout=timeout))
            elif method.client_streaming:
                self.channel.stream_unary(path, **kwargs)(iter([request]), timeout=timeout)
            elif method.server_streaming:
                list(self.channel.unary_stream(path, **kwargs)(request, timeout=timeout))
            else:
                self.channel.unary_unary(path, **kwargs)(request, timeout=timeout)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def healthy(self) -> bool:
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        self.channel.close()
        self._run(self._server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@contextmanager
def serve_in_thread(
    registrations: Registrations, authenticator: TokenAuthenticator | None = None
) -> Iterator[InProcessServer]:
    server = InProcessServer(registrations, authenticator)
    try:
        yield server
    finally:
        server.stop()
