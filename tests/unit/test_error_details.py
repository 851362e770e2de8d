"""Error details reach only admin callers (issue 16, defect 5).

An unexpected exception's text and the server's file paths describe its insides; a
caller without the admin scope gets the status and a log reference, nothing more.
"""

from __future__ import annotations

import grpc
import pytest

from rlhf.v1 import feedback_pb2
from services.common.errors import NotFound
from services.common.interceptor import redact_paths
from services.common.security import Principal, TokenAuthenticator
from tests.support.grpc_fuzz import serve_in_thread

SECRET_PATH = "/srv/rlhf/models/private-rm/config.json"


def _boom(request, context):
    raise RuntimeError(f"cannot parse {SECRET_PATH}: unexpected token")


def _missing(request, context):
    raise NotFound(f"no checkpoint at {SECRET_PATH}")


def _handlers(server):
    empty = {
        "request_deserializer": feedback_pb2.GetStatsRequest.FromString,
        "response_serializer": feedback_pb2.GetStatsResponse.SerializeToString,
    }
    handlers = {
        "SubmitFeedback": grpc.unary_unary_rpc_method_handler(_boom, **empty),  # scope "feedback"
        "GetStats": grpc.unary_unary_rpc_method_handler(_boom, **empty),  # scope "admin"
        "ListRatings": grpc.unary_unary_rpc_method_handler(_missing, **empty),  # scope "admin"
        "ExportFeedback": grpc.unary_unary_rpc_method_handler(_missing, **empty),  # scope "admin"
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rlhf.v1.FeedbackService", handlers),))
    scored = {"Score": grpc.unary_unary_rpc_method_handler(_missing, **empty)}  # scope "score"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rlhf.v1.RewardService", scored),))


@pytest.fixture(scope="module")
def server():
    auth = TokenAuthenticator(
        [
            ("user-token", Principal("user", frozenset({"feedback", "score"}), "default")),
            ("admin-token", Principal("ops", frozenset({"admin", "feedback"}), "default")),
        ]
    )
    with serve_in_thread([(None, lambda _, s: _handlers(s), "rlhf.v1.FeedbackService")], auth) as s:
        yield s


def _call(server, method, token, service="FeedbackService"):
    call = server.channel.unary_unary(
        f"/rlhf.v1.{service}/{method}",
        request_serializer=feedback_pb2.GetStatsRequest.SerializeToString,
        response_deserializer=feedback_pb2.GetStatsResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(feedback_pb2.GetStatsRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    return info.value


def test_internal_error_hides_exception_text_and_paths_from_non_admin(server):
    error = _call(server, "SubmitFeedback", "user-token")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" not in error.details() and "/srv" not in error.details()
    assert "ref " in error.details()


def test_admin_sees_the_internal_error(server):
    error = _call(server, "GetStats", "admin-token")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in error.details() and SECRET_PATH in error.details()


def test_refusal_from_admin_rpc_keeps_paths_for_admin_only(server):
    assert SECRET_PATH in _call(server, "ListRatings", "admin-token").details()
    refused = _call(server, "ExportFeedback", "user-token")  # refused on scope before the handler runs
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "/rlhf.v1.FeedbackService/ExportFeedback" in refused.details()


def test_domain_error_keeps_its_message_but_not_the_path_for_non_admin(server):
    error = _call(server, "Score", "user-token", service="RewardService")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no checkpoint at <server path>"


def test_redact_paths_keeps_method_names_and_urls():
    assert redact_paths(f"no checkpoint at {SECRET_PATH}") == "no checkpoint at <server path>"
    method = "needed by /rlhf.v1.PolicyService/PushWeights"
    assert redact_paths(method) == method
    assert redact_paths("see https://example.org/a/b") == "see https://example.org/a/b"
