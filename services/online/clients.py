"""gRPC clients the online loop and the simulator use: policy replicas, feedback reads, reward admin."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterator

import grpc

from rlhf.v1 import feedback_pb2, feedback_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.common.client import open_channel
from services.trainer.clients import PolicyReplica, with_retries

__all__ = ["FeedbackReader", "PolicyReplica", "RewardScorer", "is_unimplemented", "require_loopback"]

log = logging.getLogger(__name__)


def require_loopback(address: str) -> None:
    """Refuses a host:port that resolves to anything but loopback (simulated load stays on this machine)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {address!r}: {exc}") from exc
    outside = sorted(a for a in resolved if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise ValueError(f"{address!r} resolves to {outside}: the simulator only sends traffic to loopback addresses")


class FeedbackReader:
    """Paged reads of the experience store through FeedbackService (scope admin)."""

    def __init__(self, address: str, timeout_s: float = 120.0, retries: int = 3) -> None:
        self.channel = open_channel(address)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries

    def _pages(self, method, request_type, since: int, limit: int) -> Iterator:
        while True:
            reply = with_retries(lambda: method(request_type(since_cursor=since, limit=limit), timeout=self.timeout_s),
                                 request_type.__name__, self.retries)
            yield reply
            since = reply.next_cursor
            if not reply.has_more:
                return

    def preferences(self, since: int, limit: int = 1000) -> Iterator[feedback_pb2.ListPreferencesResponse]:
        return self._pages(self.stub.ListPreferences, feedback_pb2.ListPreferencesRequest, since, limit)

    def ratings(self, since: int, limit: int = 1000) -> Iterator[feedback_pb2.ListRatingsResponse]:
        return self._pages(self.stub.ListRatings, feedback_pb2.ListRatingsRequest, since, limit)

    def prompts(self, since: int, limit: int = 1000) -> Iterator[feedback_pb2.ListPromptsResponse]:
        return self._pages(self.stub.ListPrompts, feedback_pb2.ListPromptsRequest, since, limit)

    def rating_records(self, since: int, limit: int = 10000) -> Iterator[feedback_pb2.ExportFeedbackResponse]:
        """Raw rating and thumbs records (who rated which sample)."""
        kinds = [feedback_pb2.FEEDBACK_KIND_RATING, feedback_pb2.FEEDBACK_KIND_THUMBS]
        while True:
            request = feedback_pb2.ExportFeedbackRequest(since_cursor=since, limit=limit, kinds=kinds)
            reply = with_retries(lambda: self.stub.ExportFeedback(request, timeout=self.timeout_s), "ExportFeedback", self.retries)
            yield reply
            since = reply.next_cursor
            if not reply.has_more:
                return

    def stats(self) -> feedback_pb2.GetStatsResponse:
        return with_retries(lambda: self.stub.GetStats(feedback_pb2.GetStatsRequest(), timeout=30), "GetStats", self.retries)

    def close(self) -> None:
        self.channel.close()


class RewardScorer:
    """Scores with one model; `hosted()` tells whether the model exists yet."""

    def __init__(self, address: str, timeout_s: float = 300.0, retries: int = 3) -> None:
        self.channel = open_channel(address)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries

    def hosted(self, model: str) -> str | None:
        """The latest version of `model`, or None when the service does not host it."""
        reply = with_retries(lambda: self.stub.ListModels(reward_pb2.ListModelsRequest(), timeout=30), "ListModels", self.retries)
        return next((m.version for m in reply.models if m.name == model), None)

    def score(self, model: str, items: list[reward_pb2.ScoreItem]) -> reward_pb2.ScoreResponse:
        request = reward_pb2.ScoreRequest(model=model, items=items)
        return with_retries(lambda: self.stub.Score(request, timeout=self.timeout_s), "Score", self.retries)

    def close(self) -> None:
        self.channel.close()


def is_unimplemented(exc: grpc.RpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNIMPLEMENTED
