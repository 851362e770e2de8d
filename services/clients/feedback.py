"""The FeedbackService's client (the experience store): paged reads of preferences, ratings, prompts, stats."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from rlhf.v1 import feedback_pb2, feedback_pb2_grpc
from services.clients.replica_pool import with_retries
from services.common.client import open_channel

__all__ = ["FeedbackReader"]

log = logging.getLogger(__name__)


class FeedbackReader:
    """Paged reads of the experience store through FeedbackService (scope admin)."""

    def __init__(self, address: str, timeout_s: float = 120.0, retries: int = 3) -> None:
        self.channel = open_channel(address)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self.channel)
        self.timeout_s, self.retries = timeout_s, retries

    def _pages(self, method, request_type, since: int, limit: int) -> Iterator:
        while True:
            reply = with_retries(
                lambda: method(request_type(since_cursor=since, limit=limit), timeout=self.timeout_s),
                request_type.__name__,
                self.retries,
            )
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
            reply = with_retries(
                lambda: self.stub.ExportFeedback(request, timeout=self.timeout_s), "ExportFeedback", self.retries
            )
            yield reply
            since = reply.next_cursor
            if not reply.has_more:
                return

    def stats(self) -> feedback_pb2.GetStatsResponse:
        return with_retries(
            lambda: self.stub.GetStats(feedback_pb2.GetStatsRequest(), timeout=30), "GetStats", self.retries
        )

    def close(self) -> None:
        self.channel.close()
