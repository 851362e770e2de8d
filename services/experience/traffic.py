"""The policy service's side of recording: sample ids, who is recorded, building records.

The policy servicer calls two hooks after generating, and nothing else:

    self.traffic.finish_generate(request, context, response)      # Generate
    tap = self.traffic.stream_tap(request, context, prompts)      # GenerateStream
    ... tap.observe(message) for every streamed message ...

Every sample gets a fresh `sample_id` whether or not it is recorded. A request is
recorded (all its samples, so completions of one prompt can be compared) when
the server has a store, its tenant is not switched off, the request did not say
RECORDING_MODE_OFF, and either it said RECORDING_MODE_ON or it falls in the
`sample_rate` share. Records go to an ExperienceRecorder, which never blocks.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from rlhf.v1 import common_pb2, policy_pb2
from services.common.tenancy import tenant_of
from services.experience.recorder import ExperienceRecorder
from services.experience.records import SampleRecord

_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_ABORTED: "abort",
}


@dataclass(frozen=True)
class RecordingSettings:
    """Who gets recorded."""

    sample_rate: float = 1.0
    """Share of requests recorded when the request leaves it to the server, in [0, 1]."""
    disabled_tenants: frozenset[str] = frozenset()
    """Tenants never recorded, whatever their requests say (privacy)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"record_sample_rate must be in [0, 1], got {self.sample_rate}")


def new_sample_id() -> str:
    return uuid.uuid4().hex


class TrafficRecorder:
    """Decides which requests are recorded and turns replies into SampleRecords."""

    def __init__(
        self,
        recorder: ExperienceRecorder | None,
        settings: RecordingSettings = RecordingSettings(),
        random_unit: Callable[[], float] = random.random,
    ) -> None:
        self.recorder = recorder
        self.settings = settings
        self._random_unit = random_unit

    @classmethod
    def disabled(cls) -> TrafficRecorder:
        """Assigns sample ids, records nothing (no store configured)."""
        return cls(None)

    def tenant_if_recorded(self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> str | None:
        """The tenant to record the request under, or None when it is not recorded."""
        if self.recorder is None or request.recording == policy_pb2.RECORDING_MODE_OFF:
            return None
        tenant = tenant_of(context)
        if tenant in self.settings.disabled_tenants:
            return None
        if request.recording != policy_pb2.RECORDING_MODE_ON and self._random_unit() >= self.settings.sample_rate:
            return None
        return tenant

    def finish_generate(
        self,
        request: policy_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
        response: policy_pb2.GenerateResponse,
    ) -> None:
        """Sets every sample's id and records the samples if the request is recorded."""
        tenant = self.tenant_if_recorded(request, context)
        request_id = request.request_id or uuid.uuid4().hex
        now = time.time()
        for p, result in enumerate(response.results):
            prompt = request.prompts[p]
            for sample in result.samples:
                sample.sample_id = new_sample_id()
                if tenant is None:
                    continue
                self.recorder.record(
                    SampleRecord(
                        sample_id=sample.sample_id,
                        request_id=request_id,
                        tenant=tenant,
                        prompt_index=p,
                        sample_index=sample.index,
                        prompt_text=prompt.text if prompt.text else None,
                        chat_template=bool(prompt.text) and prompt.apply_chat_template,
                        prompt_token_ids=list(result.prompt_token_ids),
                        completion_text=sample.text,
                        token_ids=list(sample.token_ids),
                        logprobs=list(sample.logprobs),
                        finish_reason=_FINISH.get(sample.finish_reason, "unknown"),
                        weight_version=sample.weight_version,
                        created_at=now,
                        template=prompt.template,
                    )
                )

    def stream_tap(
        self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext, prompts: list[list[int]]
    ) -> StreamTap:
        """A tap for one GenerateStream call; `prompts` are the validated prompt token ids."""
        return StreamTap(self, request, self.tenant_if_recorded(request, context), prompts)


class StreamTap:
    """Stamps sample ids on streamed messages and records each sample when it finishes."""

    def __init__(
        self, owner: TrafficRecorder, request: policy_pb2.GenerateRequest, tenant: str | None, prompts: list[list[int]]
    ) -> None:
        self._owner = owner
        self._request = request
        self._request_id = request.request_id or uuid.uuid4().hex
        self._tenant = tenant
        self._prompts = prompts
        self._ids: dict[tuple[int, int], str] = {}
        self._parts: dict[tuple[int, int], tuple[list[str], list[int], list[float]]] = {}

    def observe(self, message: policy_pb2.GenerateStreamResponse) -> None:
        key = (message.prompt_index, message.sample_index)
        sample_id = self._ids.get(key)
        if sample_id is None:
            sample_id = self._ids[key] = new_sample_id()
        message.sample_id = sample_id
        if self._tenant is None:
            return
        text, token_ids, logprobs = self._parts.setdefault(key, ([], [], []))
        text.append(message.text_delta)
        token_ids.extend(message.token_ids)
        logprobs.extend(message.logprobs)
        if message.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED:
            return
        del self._parts[key]
        prompt = self._request.prompts[message.prompt_index]
        self._owner.recorder.record(
            SampleRecord(
                sample_id=sample_id,
                request_id=self._request_id,
                tenant=self._tenant,
                prompt_index=message.prompt_index,
                sample_index=message.sample_index,
                prompt_text=prompt.text if prompt.text else None,
                chat_template=bool(prompt.text) and prompt.apply_chat_template,
                prompt_token_ids=list(self._prompts[message.prompt_index]),
                completion_text="".join(text),
                token_ids=token_ids,
                logprobs=logprobs,
                finish_reason=_FINISH.get(message.finish_reason, "unknown"),
                weight_version=message.weight_version,
                created_at=time.time(),
                template=prompt.template,
            )
        )
