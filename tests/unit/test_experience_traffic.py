"""Which requests the policy records, sample ids, and the records built from replies and streams."""

from __future__ import annotations

from rlhf.v1 import common_pb2, policy_pb2
from services.experience.traffic import RecordingSettings, TrafficRecorder


class FakeRecorder:
    def __init__(self) -> None:
        self.records = []

    def record(self, record) -> bool:
        self.records.append(record)
        return True


class Context:
    def __init__(self, tenant: str | None = None) -> None:
        self.metadata = (("x-rlhf-tenant", tenant),) if tenant else ()

    def invocation_metadata(self):
        return self.metadata


def request(mode=policy_pb2.RECORDING_MODE_UNSPECIFIED, text="hello", request_id="r-1"):
    prompt = (
        policy_pb2.Prompt(text=text, system="Be terse.", apply_chat_template=True, template="critic")
        if text
        else policy_pb2.Prompt(token_ids=[5, 6])
    )
    return policy_pb2.GenerateRequest(prompts=[prompt], request_id=request_id, recording=mode)


def response(n: int = 2) -> policy_pb2.GenerateResponse:
    reply = policy_pb2.GenerateResponse()
    result = reply.results.add(prompt_token_ids=[1, 2, 3])
    for i in range(n):
        result.samples.add(
            index=i,
            text=f"t{i}",
            token_ids=[10 + i],
            logprobs=[-0.25],
            weight_version=4,
            finish_reason=common_pb2.FINISH_REASON_STOP,
        )
    return reply


def traffic(rate: float = 1.0, off=(), draw: float = 0.5):
    sink = FakeRecorder()
    return TrafficRecorder(sink, RecordingSettings(rate, frozenset(off)), random_unit=lambda: draw), sink


def test_generate_records_every_sample_with_its_id():
    hook, sink = traffic()
    reply = response()
    hook.finish_generate(request(), Context("team-a"), reply)
    ids = [s.sample_id for s in reply.results[0].samples]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert [r.sample_id for r in sink.records] == ids
    first = sink.records[0]
    assert (first.request_id, first.tenant, first.prompt_text, first.chat_template) == ("r-1", "team-a", "hello", True)
    assert (first.prompt_token_ids, first.token_ids, first.logprobs) == ([1, 2, 3], [10], [-0.25])
    assert (first.completion_text, first.finish_reason, first.weight_version) == ("t0", "stop", 4)
    assert first.template == "critic"  # the prompt's template, recorded with every sample


def test_opt_out_disabled_tenant_and_sampling_still_get_sample_ids():
    cases = [
        (traffic(), request(policy_pb2.RECORDING_MODE_OFF), Context()),
        (traffic(off=("secret",)), request(policy_pb2.RECORDING_MODE_ON), Context("secret")),
        (traffic(rate=0.25, draw=0.5), request(), Context()),
    ]
    for (hook, sink), req, ctx in cases:
        reply = response()
        hook.finish_generate(req, ctx, reply)
        assert sink.records == []
        assert all(s.sample_id for s in reply.results[0].samples)


def test_recording_on_overrides_the_sample_rate_and_rate_draws_decide():
    hook, sink = traffic(rate=0.0)
    hook.finish_generate(request(policy_pb2.RECORDING_MODE_ON), Context(), response())
    assert len(sink.records) == 2
    hook, sink = traffic(rate=0.25, draw=0.2)
    hook.finish_generate(request(), Context(), response())
    assert len(sink.records) == 2


def test_disabled_traffic_recorder_only_assigns_ids():
    reply = response()
    TrafficRecorder.disabled().finish_generate(request(), None, reply)  # no context needed when nothing records
    assert all(s.sample_id for s in reply.results[0].samples)


def test_token_id_prompts_are_left_for_the_writer_to_decode_and_request_ids_generated():
    hook, sink = traffic()
    hook.finish_generate(request(text="", request_id=""), Context(), response(1))
    assert sink.records[0].prompt_text is None and sink.records[0].chat_template is False
    assert sink.records[0].template == ""
    assert len(sink.records[0].request_id) == 32


def test_stream_tap_stamps_ids_and_records_each_sample_once_when_finished():
    hook, sink = traffic()
    tap = hook.stream_tap(request(), Context(), [[1, 2, 3]])
    messages = [
        policy_pb2.GenerateStreamResponse(
            prompt_index=0, sample_index=0, text_delta="a", token_ids=[1], logprobs=[-1.0], weight_version=2
        ),
        policy_pb2.GenerateStreamResponse(
            prompt_index=0,
            sample_index=1,
            text_delta="x",
            token_ids=[7],
            logprobs=[-2.0],
            weight_version=2,
            finish_reason=common_pb2.FINISH_REASON_LENGTH,
        ),
        policy_pb2.GenerateStreamResponse(
            prompt_index=0,
            sample_index=0,
            text_delta="b",
            token_ids=[2],
            logprobs=[-0.5],
            weight_version=2,
            finish_reason=common_pb2.FINISH_REASON_STOP,
        ),
    ]
    for message in messages:
        tap.observe(message)
    assert messages[0].sample_id == messages[2].sample_id != messages[1].sample_id
    by_id = {r.sample_id: r for r in sink.records}
    assert len(sink.records) == 2
    first = by_id[messages[0].sample_id]
    assert (first.completion_text, first.token_ids, first.logprobs, first.finish_reason) == (
        "ab",
        [1, 2],
        [-1.0, -0.5],
        "stop",
    )
    assert first.prompt_token_ids == [1, 2, 3] and by_id[messages[1].sample_id].finish_reason == "length"
    assert {r.template for r in sink.records} == {"critic"}


def test_stream_tap_without_recording_still_stamps_ids():
    hook, sink = traffic()
    tap = hook.stream_tap(request(policy_pb2.RECORDING_MODE_OFF), Context(), [[1]])
    message = policy_pb2.GenerateStreamResponse(
        prompt_index=0, sample_index=0, finish_reason=common_pb2.FINISH_REASON_STOP
    )
    tap.observe(message)
    assert message.sample_id and sink.records == []
