"""The policy's recording hook without a store: every sample gets a fresh id, a streamed sample keeps one id."""

from __future__ import annotations

from rlhf.v1 import policy_pb2
from services.policy.recording import SampleIds


def test_generate_gets_a_distinct_id_per_sample():
    response = policy_pb2.GenerateResponse()
    for _ in range(2):
        result = response.results.add()
        result.samples.add(index=0)
        result.samples.add(index=1)
    SampleIds().finish_generate(policy_pb2.GenerateRequest(), None, response)
    ids = [s.sample_id for r in response.results for s in r.samples]
    assert all(len(i) == 32 for i in ids) and len(set(ids)) == 4


def test_a_streamed_sample_keeps_its_id_across_messages():
    tap = SampleIds().stream_tap(policy_pb2.GenerateRequest(), None, [[1, 2]])
    messages = [policy_pb2.GenerateStreamResponse(prompt_index=0, sample_index=s) for s in (0, 1, 0, 1)]
    for message in messages:
        tap.observe(message)
    assert messages[0].sample_id == messages[2].sample_id != messages[1].sample_id == messages[3].sample_id
    other = SampleIds().stream_tap(policy_pb2.GenerateRequest(), None, [[1, 2]])
    again = policy_pb2.GenerateStreamResponse(prompt_index=0, sample_index=0)
    other.observe(again)
    assert again.sample_id != messages[0].sample_id
