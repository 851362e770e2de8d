"""Bad input, deadlines and racing pushes against the live policy server: it keeps serving."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.weight_stream import push_requests

pytestmark = pytest.mark.integration

ALLOWED_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def stub(policy_server):
    with open_channel(policy_server.address) as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)


def healthy(stub):
    reply = stub.Generate(
        policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(token_ids=[1, 2, 3])],
            sampling=policy_pb2.SamplingParams(max_tokens=2, temperature=0.0),
        ),
        timeout=60,
    )
    assert len(reply.results[0].samples[0].token_ids) >= 1


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(0, 2, width=32))
prompts = st.builds(
    policy_pb2.Prompt,
    text=st.one_of(st.just(""), st.text(max_size=40)),
    token_ids=st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 60000), max_size=6),
    apply_chat_template=st.booleans(),
)


@st.composite
def generate_requests(draw):
    sampling = policy_pb2.SamplingParams(
        n=draw(st.integers(0, 3) | st.integers(0, 2**32 - 1)),
        max_tokens=draw(st.integers(0, 4) | st.integers(0, 2**32 - 1)),
        top_k=draw(st.integers(0, 2**32 - 1)),
        stop=draw(st.lists(st.text(max_size=300), max_size=10)),
    )
    for field in ("temperature", "top_p"):
        if draw(st.booleans()):
            setattr(sampling, field, draw(floats))
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(0, 2**64 - 1))
    return policy_pb2.GenerateRequest(
        prompts=draw(st.lists(prompts, max_size=3)),
        sampling=sampling,
        request_id=draw(st.text(max_size=70)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=generate_requests())
def test_fuzz_generate_never_internal(stub, request):
    try:
        reply = stub.Generate(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED_ERRORS, f"{exc.code()}: {exc.details()}"
        return
    assert len(reply.results) == len(request.prompts)
    for result in reply.results:
        assert len(result.samples) == (request.sampling.n or 1)


chunks = st.builds(
    common_pb2.TensorChunk,
    name=st.sampled_from(["model.norm.weight", "model.embed_tokens.weight", "x"]) | st.text(max_size=20),
    dtype=st.integers(0, 5),
    shape=st.lists(st.integers(-3, 200), max_size=3),
    offset=st.integers(0, 2**64 - 1) | st.integers(0, 64),
    data=st.binary(max_size=300),
)
push_messages = st.one_of(
    st.builds(lambda c: policy_pb2.PushWeightsRequest(chunk=c), chunks),
    st.builds(
        lambda n, b: policy_pb2.PushWeightsRequest(begin=policy_pb2.PushBegin(num_tensors=n, total_bytes=b)),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(lambda d: policy_pb2.PushWeightsRequest(commit=policy_pb2.PushCommit(sha256=d)), st.binary(max_size=40)),
    st.just(policy_pb2.PushWeightsRequest()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(push_messages, max_size=8))
def test_fuzz_push_never_internal_and_never_applies(stub, messages):
    before = stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version
    with pytest.raises(grpc.RpcError) as info:
        stub.PushWeights(iter(messages), timeout=60)
    assert info.value.code() in ALLOWED_ERRORS, f"{info.value.code()}: {info.value.details()}"
    assert stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version == before


def test_server_still_serves_after_fuzzing(stub):
    healthy(stub)


def test_deadline_cancels_generation_and_frees_the_slot(stub):
    request = policy_pb2.GenerateRequest(
        prompts=[policy_pb2.Prompt(token_ids=[1, 2, 3])],
        sampling=policy_pb2.SamplingParams(n=4, max_tokens=400, temperature=1.0, stop=[]),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 20
    while stub.GetStatus(policy_pb2.GetStatusRequest()).running_requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stub.GetStatus(policy_pb2.GetStatusRequest()).running_requests == 0
    healthy(stub)


def test_racing_pushes_apply_one_at_a_time(stub, policy_server):
    """Two pushes conditioned on the same version: exactly one wins, the other is refused whole."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_server.model_dir, dtype=torch.float32)
    params = [(n, p.detach()) for n, p in model.named_parameters()]
    start = stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version
    results: list = [None, None]

    def push(slot):
        try:
            results[slot] = stub.PushWeights(
                push_requests(params, 128 * 1024, expected_version=start, note=f"racer {slot}"), timeout=120
            )
        except grpc.RpcError as exc:
            results[slot] = exc.code()

    racers = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(120)
    winners = [r for r in results if isinstance(r, policy_pb2.PushWeightsResponse)]
    assert len(winners) == 1 and winners[0].weight_version == start + 1
    assert grpc.StatusCode.FAILED_PRECONDITION in results
    assert stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version == start + 1
    healthy(stub)


def test_pushes_during_heavy_generation_never_fail_a_request(stub, policy_server):
    """Concurrent generation while three pushes land: every request succeeds and reports one version."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_server.model_dir, dtype=torch.float32)
    params = [(n, p.detach()) for n, p in model.named_parameters()]
    start = stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version
    stop, failures, seen = threading.Event(), [], []

    def client(seed):
        while not stop.is_set():
            try:
                reply = stub.Generate(
                    policy_pb2.GenerateRequest(
                        prompts=[policy_pb2.Prompt(token_ids=[1, 2, seed])],
                        sampling=policy_pb2.SamplingParams(n=2, max_tokens=24, seed=seed),
                    ),
                    timeout=120,
                )
                samples = reply.results[0].samples
                assert len({s.weight_version for s in samples}) == 1
                seen.append(samples[0].weight_version)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    clients = [threading.Thread(target=client, args=(i + 5,)) for i in range(4)]
    for thread in clients:
        thread.start()
    for i in range(3):
        reply = stub.PushWeights(push_requests(params, 256 * 1024, note=f"under load {i}"), timeout=120)
        assert reply.weight_version == start + i + 1
    stop.set()
    for thread in clients:
        thread.join(120)
    assert not failures, failures[:3]
    assert seen and min(seen) >= start and max(seen) <= start + 3
