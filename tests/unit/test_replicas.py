"""Client-side replica handling of the trainer: spread, push-to-all, lag detection and catch-up (fake stubs)."""

from __future__ import annotations

import grpc
import pytest
import torch

from rlhf.v1 import policy_pb2, reward_pb2
from services.clients import replica_pool
from services.clients.policy import PolicyClient
from services.clients.replica_pool import ReplicasUnavailable, split_addresses, with_retries
from services.clients.reward import RewardClient
from services.common.weight_stream import PushAssembler, TensorSpec


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(replica_pool.time, "sleep", lambda s: None)


class FakePolicy:
    """The parts of a policy server the client talks to: versions, pushes, generation, being down."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = self.highest = 0
        self.down = False
        self.pushes: list[tuple[int, int]] = []  # (version, tensors)
        self.generated: list[str] = []

    def restart(self) -> None:
        self.version = self.highest = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"{self.name} is down")

    def GetStatus(self, request, timeout=None):
        self._check()
        return policy_pb2.GetStatusResponse(
            model="m", weight_version=self.version, highest_version=self.highest, state=policy_pb2.ENGINE_STATE_SERVING
        )

    def Generate(self, request, timeout=None):
        self._check()
        reply = policy_pb2.GenerateResponse()
        for prompt in request.prompts:
            self.generated.append(prompt.text)
            reply.results.add().samples.add(text=f"{prompt.text}@{self.name}", weight_version=self.version)
        return reply

    def PushWeights(self, requests, timeout=None):
        self._check()
        assembler = PushAssembler(MANIFEST, max_total_bytes=1 << 30, require_complete=False)
        version = None
        for request in requests:
            assembler.feed(request)
            if request.HasField("begin") and request.begin.HasField("version"):
                version = request.begin.version
        staged = assembler.finish()
        if staged.expected_version is not None and staged.expected_version != self.version:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "expected version mismatch")
        if version is not None and version <= self.highest:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "version reused")
        previous, self.version = self.version, self.highest + 1 if version is None else version
        self.highest = self.version
        self.pushes.append((self.version, len(staged.tensors)))
        return policy_pb2.PushWeightsResponse(
            weight_version=self.version, previous_version=previous, num_tensors=len(staged.tensors)
        )


WEIGHTS = [("a.weight", torch.ones(3)), ("b.weight", torch.zeros(2, 2))]
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in WEIGHTS}


def policy_client(*fakes: FakePolicy, wait_s: float = 5.0) -> PolicyClient:
    client = PolicyClient(
        ",".join(f"127.0.0.1:{10001 + i}" for i in range(len(fakes))), timeout_s=5, retries=1, wait_s=wait_s
    )
    for replica, fake in zip(client.replicas, fakes):
        replica.stub = fake
    client.full_weights = lambda: WEIGHTS
    client.status()
    return client


def generate_request(n: int) -> policy_pb2.GenerateRequest:
    return policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(text=f"p{i}") for i in range(n)], request_id="r")


def test_generation_is_split_over_replicas_and_comes_back_in_request_order():
    a, b = FakePolicy("a"), FakePolicy("b")
    reply = policy_client(a, b).generate(generate_request(5))
    assert [r.samples[0].text.split("@")[0] for r in reply.results] == [f"p{i}" for i in range(5)]
    assert a.generated and b.generated and sorted(a.generated + b.generated) == [f"p{i}" for i in range(5)]


def test_generation_fails_over_when_a_replica_is_down():
    a, b = FakePolicy("a"), FakePolicy("b")
    client = policy_client(a, b)
    b.down = True
    reply = client.generate(generate_request(4))
    assert [r.samples[0].text for r in reply.results] == [f"p{i}@a" for i in range(4)]
    assert client.lagging() and "policy[1]" in client.lagging()[0]


def test_a_push_reaches_every_replica_under_one_version_number():
    a, b = FakePolicy("a"), FakePolicy("b")
    b.version = b.highest = 0
    a.highest = 3  # a rolled back earlier: numbers must stay above every replica's highest
    client = policy_client(a, b)
    reply = client.push(WEIGHTS[:1], 1 << 20, client.version, "step")
    assert reply.weight_version == 4 == client.version
    assert a.pushes == [(4, 1)] and b.pushes == [(4, 1)]


def test_a_replica_that_missed_a_push_is_caught_up_with_every_tensor_after_its_restart():
    a, b = FakePolicy("a"), FakePolicy("b")
    client = policy_client(a, b)
    client.push(WEIGHTS[:1], 1 << 20, 0, "step 1")
    b.down = True
    client.push(WEIGHTS[:1], 1 << 20, 1, "step 2")
    assert client.version == 2 and a.version == 2 and b.version == 1
    assert client.lagging(), "the replica that missed the push must leave the rotation"
    b.restart()  # comes back with the checkpoint's weights, version 0
    client.recover()
    assert not client.lagging()
    assert b.version == 2 and b.pushes[-1] == (2, len(WEIGHTS)), "caught up with a full push at the current version"


def test_a_replica_someone_else_pushed_to_is_never_overwritten():
    a, b = FakePolicy("a"), FakePolicy("b")
    client = policy_client(a, b)
    client.push(WEIGHTS, 1 << 20, 0, "step 1")
    b.version, b.highest = 0, 7  # an outside writer (or a rollback) changed b
    client.push(WEIGHTS, 1 << 20, 1, "step 2")
    assert client.version == 2 and a.version == 2 and b.version == 0
    pushes_before = list(b.pushes)
    client.recover()
    assert b.pushes == pushes_before and "diverged" in client.lagging()[0]


def test_a_single_replica_that_restarts_during_a_push_is_waited_for_and_caught_up():
    a = FakePolicy("a")
    client = policy_client(a)
    client.push(WEIGHTS, 1 << 20, 0, "step 1")
    a.down = True
    probes = {"n": 0}
    status = a.GetStatus

    def coming_back(request, timeout=None):
        probes["n"] += 1
        if probes["n"] == 3:
            a.restart()
        return status(request, timeout)

    a.GetStatus = coming_back
    reply = client.push(WEIGHTS[:1], 1 << 20, 1, "step 2")
    assert reply.weight_version == 2 and a.version == 2
    assert a.pushes[-1] == (2, len(WEIGHTS)), "the restarted replica needs every tensor, not just the changed one"


def test_the_wait_for_a_replica_is_bounded():
    a = FakePolicy("a")
    client = policy_client(a, wait_s=1.0)
    a.down = True
    with pytest.raises(ReplicasUnavailable, match="no replica"):
        client.generate(generate_request(1))


def test_with_retries_is_bounded_and_raises_other_codes_at_once():
    calls = {"n": 0}

    def unavailable():
        calls["n"] += 1
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        with_retries(unavailable, "x", retries=3)
    assert calls["n"] == 4
    calls["n"] = 0

    def invalid():
        calls["n"] += 1
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(grpc.RpcError):
        with_retries(invalid, "x", retries=3)
    assert calls["n"] == 1


class FakeReward:
    def __init__(self, name: str, versions: list[str]) -> None:
        self.name, self.versions, self.down, self.calls = name, versions, False, 0

    def ListModels(self, request, timeout=None):
        if self.down:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        info = reward_pb2.RewardModelInfo(name="rm", version=self.versions[-1], loaded_versions=self.versions)
        return reward_pb2.ListModelsResponse(models=[info])

    def Score(self, request, timeout=None):
        if self.down:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        self.calls += 1
        return reward_pb2.ScoreResponse(scores=[0.5] * len(request.items), model="rm", model_version=self.versions[-1])


def reward_client(*fakes: FakeReward) -> RewardClient:
    client = RewardClient(
        ",".join(f"127.0.0.1:{20001 + i}" for i in range(len(fakes))), timeout_s=5, retries=1, wait_s=5
    )
    for replica, fake in zip(client.replicas, fakes):
        replica.stub = fake
    client.models = ("rm",)
    return client


def test_reward_calls_are_spread_and_fail_over():
    a, b = FakeReward("a", ["v1"]), FakeReward("b", ["v1"])
    client = reward_client(a, b)
    for _ in range(4):
        client.score("rm", [reward_pb2.ScoreItem(prompt="p", completion="c")])
    assert a.calls == 2 and b.calls == 2
    b.down = True
    for _ in range(3):
        assert client.score("rm", [reward_pb2.ScoreItem(prompt="p", completion="c")]).model_version == "v1"
    assert a.calls == 5


def test_a_reward_replica_behind_on_a_model_version_leaves_the_rotation_until_it_catches_up():
    a, b = FakeReward("a", ["v1", "v2"]), FakeReward("b", ["v1"])
    client = reward_client(a, b)
    client.recover()
    assert [r.in_rotation for r in client.replicas] == [True, False]
    assert "rm@v1" in client.replicas[1].reason
    b.versions = ["v1", "v2"]
    client.recover()
    assert all(r.in_rotation for r in client.replicas)


def test_addresses_split_and_resolve():
    assert split_addresses("a:1, b:2") == ["a:1", "b:2"]
    assert "127.0.0.1:5" in split_addresses("dns:///localhost:5")
    with pytest.raises(ValueError, match="duplicate"):
        split_addresses("a:1,a:1")
    with pytest.raises(ValueError, match="no service address"):
        split_addresses(" , ")
