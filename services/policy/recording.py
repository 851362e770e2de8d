"""What the policy servicer calls after generating: stamp sample ids, and maybe record the samples.

The servicer sees only the `Traffic` protocol, never where records go: the process entry
point (`services/policy/__main__.py`) passes the experience store's recorder
(`services.experience.traffic.TrafficRecorder`) when `--experience-db` is set. Without one,
`SampleIds` gives every sample a fresh id and records nothing, so the policy service does
not depend on the experience service (see the layer contract in pyproject.toml).
"""

from __future__ import annotations

import uuid
from typing import Protocol

import grpc

from rlhf.v1 import policy_pb2


class StreamObserver(Protocol):
    def observe(self, message: policy_pb2.GenerateStreamResponse) -> None:
        """Stamps the message's sample id (and records the sample once it finishes)."""


class Traffic(Protocol):
    """The two hooks the servicer calls after generating, and nothing else."""

    def finish_generate(
        self,
        request: policy_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
        response: policy_pb2.GenerateResponse,
    ) -> None:
        """Sets every sample's id in `response` (and records the samples when the request is recorded)."""

    def stream_tap(
        self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext, prompts: list[list[int]]
    ) -> StreamObserver:
        """An observer for one GenerateStream call; `prompts` are the validated prompt token ids."""


class SampleIds:
    """`Traffic` without a store: fresh sample ids, no recording."""

    def finish_generate(
        self,
        request: policy_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
        response: policy_pb2.GenerateResponse,
    ) -> None:
        for result in response.results:
            for sample in result.samples:
                sample.sample_id = uuid.uuid4().hex

    def stream_tap(
        self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext, prompts: list[list[int]]
    ) -> StreamObserver:
        return _StreamIds()


class _StreamIds:
    """One id per (prompt, sample) of a stream, the same on every message of that sample."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], str] = {}

    def observe(self, message: policy_pb2.GenerateStreamResponse) -> None:
        key = (message.prompt_index, message.sample_index)
        message.sample_id = self._ids.setdefault(key, uuid.uuid4().hex)
