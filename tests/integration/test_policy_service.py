"""The policy service against a real vLLM engine (tiny model, loopback)."""

from __future__ import annotations

import os
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.shared_segment import STREAM_INSTEAD, host_id, segment_requests, write_segment
from services.common.weight_stream import push_requests
from services.trainer.grpo import token_logprobs

pytestmark = pytest.mark.integration

PROMPT = "Write a short review of Moby Dick."


@pytest.fixture(scope="module")
def stub(policy_server):
    with open_channel(policy_server.address) as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)


@pytest.fixture(scope="module")
def hf_model(policy_server):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(policy_server.model_dir, dtype=torch.float32).eval()


def params_of(model) -> list[tuple[str, torch.Tensor]]:
    return [(name, p.detach().clone()) for name, p in model.named_parameters()]


def perturbed(params, scale: float, seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(n, t + scale * t.std() * torch.randn(t.shape, generator=g) if t.dim() == 2 else t) for n, t in params]


def version(stub) -> int:
    return stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version


def greedy(stub, max_tokens: int = 12) -> policy_pb2.Sample:
    reply = stub.Generate(
        policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text=PROMPT, apply_chat_template=True)],
            sampling=policy_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
    )
    return reply.results[0].samples[0]


def push(stub, params, **kwargs) -> policy_pb2.PushWeightsResponse:
    return stub.PushWeights(push_requests(params, chunk_bytes=256 * 1024, **kwargs), timeout=120)


def test_health_and_reflection(policy_server):
    with open_channel(policy_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rlhf.v1.PolicyService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {"rlhf.v1.PolicyService", "grpc.health.v1.Health"} <= names


def test_status(stub, policy_server):
    status = stub.GetStatus(policy_pb2.GetStatusRequest())
    assert status.state == policy_pb2.ENGINE_STATE_SERVING
    assert status.vocab_size == 49152 and status.max_model_len == 512
    assert status.engine.startswith("vllm ")


def test_logprobs_match_the_trainers_recomputation(stub, hf_model):
    """vLLM's returned logprobs equal the trainer's own forward pass on the same weights."""
    push(stub, params_of(hf_model), note="known weights")  # whatever ran before, serve exactly these
    for temperature in (1.0, 0.7):
        reply = stub.Generate(
            policy_pb2.GenerateRequest(
                prompts=[
                    policy_pb2.Prompt(text=PROMPT, apply_chat_template=True),
                    policy_pb2.Prompt(token_ids=[1, 2, 3, 4]),
                ],
                sampling=policy_pb2.SamplingParams(n=3, max_tokens=16, temperature=temperature, seed=11),
            )
        )
        assert len(reply.results) == 2
        for result in reply.results:
            assert len(result.samples) == 3
            for sample in result.samples:
                assert len(sample.token_ids) == len(sample.logprobs) > 0
                ids = torch.tensor([list(result.prompt_token_ids) + list(sample.token_ids)])
                with torch.no_grad():
                    logits = hf_model(ids).logits[:, len(result.prompt_token_ids) - 1 : -1]
                mine = token_logprobs(logits, torch.tensor([list(sample.token_ids)]), temperature)[0]
                theirs = torch.tensor(list(sample.logprobs))
                assert torch.max(torch.abs(mine - theirs)).item() < 2e-3, "engine and trainer logprobs disagree"


def test_push_changes_generation_and_bumps_version(stub, hf_model, policy_server):
    original = params_of(hf_model)
    push(stub, original, note="baseline")
    before_version, before = version(stub), greedy(stub)
    assert before.weight_version == before_version
    requests = list(
        push_requests(
            perturbed(original, 2.0, seed=1),
            chunk_bytes=256 * 1024,
            expected_version=before_version,
            note="perturbed",
            push_id="test-perturbed",
        )
    )
    reply = stub.PushWeights(iter(requests), timeout=120)
    assert (reply.previous_version, reply.weight_version) == (before_version, before_version + 1)
    assert reply.num_tensors == len(original) and reply.total_bytes > 0
    # the push's identity: its id and the weights' digest, recorded with the version and reported by GetStatus
    assert reply.push_id == "test-perturbed" and reply.digest == requests[-1].commit.digest
    assert reply.checksum == policy_pb2.CHECKSUM_ALGORITHM_XXH3_128 and len(reply.digest) == 16
    current = stub.GetStatus(policy_pb2.GetStatusRequest()).current
    assert (current.version, current.push_id, current.digest) == (before_version + 1, "test-perturbed", reply.digest)
    assert current.origin == policy_pb2.VERSION_ORIGIN_PUSH
    after = greedy(stub)
    assert after.weight_version == before_version + 1
    assert list(after.token_ids) != list(before.token_ids), "new weights did not change the output"
    status = stub.GetStatus(policy_pb2.GetStatusRequest())
    assert status.version_note == "perturbed"
    metrics = urllib.request.urlopen(policy_server.metrics_url, timeout=10).read().decode()
    assert f"rlhf_policy_weight_version {float(before_version + 1)}" in metrics
    push(stub, original, note="restore")
    assert list(greedy(stub).token_ids) == list(before.token_ids), "restoring the weights restores the output"


def _assert_unchanged(stub, version_before, tokens_before):
    assert version(stub) == version_before
    sample = greedy(stub)
    assert sample.weight_version == version_before and list(sample.token_ids) == tokens_before


def test_cut_off_push_leaves_old_version_serving(stub, hf_model):
    v0, tokens = version(stub), list(greedy(stub).token_ids)
    requests = list(push_requests(perturbed(params_of(hf_model), 2.0, seed=2), chunk_bytes=64 * 1024))
    with pytest.raises(grpc.RpcError) as info:  # stream ends without commit
        stub.PushWeights(iter(requests[: len(requests) // 2]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "commit" in info.value.details()
    _assert_unchanged(stub, v0, tokens)

    started, release = threading.Event(), threading.Event()

    def hang_midway():  # the client dies mid-stream: the call is cancelled
        for i, request in enumerate(requests):
            if i == len(requests) // 2:
                started.set()
                release.wait(30)
                return
            yield request

    future = stub.PushWeights.future(hang_midway())
    assert started.wait(30)
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    _assert_unchanged(stub, v0, tokens)


def test_corrupt_or_mismatched_push_is_rejected(stub, hf_model):
    v0, tokens = version(stub), list(greedy(stub).token_ids)
    params = perturbed(params_of(hf_model), 2.0, seed=3)
    requests = list(push_requests(params, chunk_bytes=64 * 1024))
    victim = next(r for r in requests[5:] if r.WhichOneof("item") == "chunk").chunk
    victim.data = bytes(b ^ 0x55 for b in victim.data[:8]) + victim.data[8:]
    with pytest.raises(grpc.RpcError) as info:
        stub.PushWeights(iter(requests))
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    _assert_unchanged(stub, v0, tokens)

    wrong_shape = [(n, t[:-1] if i == 0 else t) for i, (n, t) in enumerate(params)]
    with pytest.raises(grpc.RpcError) as info:
        push(stub, wrong_shape)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        push(stub, [("model.not_a_layer.weight", torch.zeros(2))] + params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown tensor" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        push(stub, params[:3])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "misses" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        push(stub, params, expected_version=v0 + 7)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _assert_unchanged(stub, v0, tokens)


def test_same_host_push_applies_and_its_faults_leave_the_old_version(stub, hf_model, tmp_path):
    """The same-host path end to end: applied from /dev/shm; cut, corrupt, mismatched, stale, other-host and
    readable-by-others segments refused with the old version serving."""
    assert stub.GetStatus(policy_pb2.GetStatusRequest()).host_id == host_id()
    v0, tokens = version(stub), list(greedy(stub).token_ids)
    params = perturbed(params_of(hf_model), 2.0, seed=7)

    def refused(requests, code, fragment, stream_instead=False):
        segment = Path(requests[0].begin.segment.path)
        with pytest.raises(grpc.RpcError) as info:
            stub.PushWeights(iter(requests), timeout=60)
        assert info.value.code() == code and fragment in info.value.details()
        # only a refusal of the path itself tells the sender to stream the same push instead
        assert info.value.details().endswith(STREAM_INSTEAD) == stream_instead
        assert segment.exists() or not stream_instead  # refusals of the path itself leave the segment unread
        segment.unlink(missing_ok=True)
        _assert_unchanged(stub, v0, tokens)

    fresh = lambda tensors=params: write_segment(tensors)  # noqa: E731
    refused(list(segment_requests(fresh(), params))[:1], grpc.StatusCode.INVALID_ARGUMENT, "commit")
    changed = fresh()
    requests = list(segment_requests(changed, params))
    with open(changed.path, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\xc0\x7f")
    refused(requests, grpc.StatusCode.DATA_LOSS, "changed after its checksum")
    wrong_shape = [(n, t[:-1] if i == 0 else t) for i, (n, t) in enumerate(params)]
    refused(list(segment_requests(fresh(wrong_shape), wrong_shape)), grpc.StatusCode.INVALID_ARGUMENT, "shape")
    refused(list(segment_requests(fresh(), params, expected_version=v0 + 7)), grpc.StatusCode.FAILED_PRECONDITION, "")
    foreign = list(segment_requests(fresh(), params))
    foreign[0].begin.segment.host_id = "another-machine"
    refused(foreign, grpc.StatusCode.FAILED_PRECONDITION, "another host", stream_instead=True)
    readable = fresh()
    os.chmod(readable.path, 0o644)
    refused(
        list(segment_requests(readable, params)), grpc.StatusCode.FAILED_PRECONDITION, "mode 644", stream_instead=True
    )

    segment = fresh()
    reply = stub.PushWeights(segment_requests(segment, params, expected_version=v0, push_id="same-host"), timeout=60)
    assert (reply.weight_version, reply.push_id, reply.digest) == (v0 + 1, "same-host", segment.digest)
    segment.path.unlink(missing_ok=True)  # moved into staging; at its path now: the spare handed back, or nothing
    assert list(greedy(stub).token_ids) != tokens, "the same-host push did not change the output"


def test_request_in_flight_during_swap_finishes_on_old_version(stub, hf_model):
    v0 = version(stub)
    first_token = threading.Event()
    streamed: list[policy_pb2.GenerateStreamResponse] = []

    def consume():
        request = policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text=PROMPT, apply_chat_template=True)],
            sampling=policy_pb2.SamplingParams(max_tokens=200, temperature=1.0, seed=5),
        )
        for message in stub.GenerateStream(request):
            streamed.append(message)
            first_token.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_token.wait(60)
    reply = push(stub, params_of(hf_model), note="during generation")
    reader.join(60)
    assert reply.weight_version == v0 + 1
    assert {m.weight_version for m in streamed} == {v0}
    assert streamed[-1].finish_reason != 0 and len(streamed[0].prompt_token_ids) > 0
    assert greedy(stub).weight_version == v0 + 1


@pytest.mark.parametrize(
    "request_, fragment",
    [
        (policy_pb2.GenerateRequest(), "no prompts"),
        (policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(text="x", token_ids=[1])]), "exactly one"),
        (policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(token_ids=[49152])]), "vocabulary"),
        (
            policy_pb2.GenerateRequest(
                prompts=[policy_pb2.Prompt(text="x")], sampling=policy_pb2.SamplingParams(temperature=float("nan"))
            ),
            "temperature",
        ),
        (
            policy_pb2.GenerateRequest(
                prompts=[policy_pb2.Prompt(text="x")], sampling=policy_pb2.SamplingParams(n=1000)
            ),
            "sampling.n",
        ),
        (
            policy_pb2.GenerateRequest(
                prompts=[policy_pb2.Prompt(text="x")], sampling=policy_pb2.SamplingParams(max_tokens=5000)
            ),
            "max_tokens",
        ),
    ],
)
def test_bad_requests_get_invalid_argument_and_server_keeps_serving(stub, request_, fragment):
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.details()
    assert greedy(stub, max_tokens=2).token_ids
