"""Domain errors and their gRPC status codes: handlers raise, one interceptor maps.

Messages say what was wrong and, where there is one, what the limit is.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of the errors a handler may raise on purpose."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    code = grpc.StatusCode.DATA_LOSS


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


def require(condition: bool, message: str) -> None:
    """Raises InvalidArgument(message) unless condition holds."""
    if not condition:
        raise InvalidArgument(message)
