"""The trainer's replica client against real policy servicers (in-process): push identity and operators' rollbacks.

Each replica is a real `PolicyServicer` over a real `WeightManager` and
`WeightHistory` (tests/support/local_policy.py), so the client decides from what
a server really reports in GetStatus, not from an invented state.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file

from rlhf.v1 import policy_pb2
from services.clients import replica_pool
from services.clients.policy import PolicyClient
from services.common.weight_stream import TensorSpec, push_requests
from services.policy.weight_history import WeightHistory, checkpoint_sources
from tests.support.local_policy import FakeWeightEngine, LocalPolicy, LocalRpcError

START = {"a.weight": torch.zeros(3), "b.weight": torch.zeros(2, 2)}
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in START.items()}


def weights(value: float) -> list[tuple[str, torch.Tensor]]:
    return [(name, torch.full_like(t, value)) for name, t in START.items()]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(replica_pool.time, "sleep", lambda s: None)


class Wire:
    """The network between the trainer and one replica: it can be down, or do something before a push arrives."""

    def __init__(self, stub) -> None:
        self.stub, self.down, self.before_push = stub, False, None

    def __getattr__(self, method: str):
        call = getattr(self.stub, method)

        def wired(request, timeout=None):
            if self.down:
                raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
            if method == "PushWeights" and self.before_push is not None:
                hook, self.before_push = self.before_push, None
                return hook(call, request, timeout)
            return call(request, timeout)

        return wired


def policy(tmp_path: Path, name: str) -> LocalPolicy:
    model_dir, staging = tmp_path / name / "model", tmp_path / name / "staging"
    model_dir.mkdir(parents=True)
    staging.mkdir()
    save_file(START, str(model_dir / "model.safetensors"))
    engine = FakeWeightEngine()
    engine.weights.update(START)
    return LocalPolicy(engine, MANIFEST, staging, WeightHistory(checkpoint_sources(model_dir), keep=2))


@pytest.fixture
def replicas(tmp_path):
    servers = [policy(tmp_path, "a"), policy(tmp_path, "b")]
    yield servers
    for server in servers:
        server.close()


def trainer_client(*servers: LocalPolicy) -> tuple[PolicyClient, list[Wire]]:
    client = PolicyClient(
        ",".join(f"127.0.0.1:{10101 + i}" for i in range(len(servers))), timeout_s=5, retries=1, wait_s=2
    )
    wires = [Wire(server.stub) for server in servers]
    for replica, wire in zip(client.replicas, wires):
        replica.stub = wire
    client.full_weights = lambda: weights(float(client.version))
    client.status()
    return client, wires


def served(server: LocalPolicy) -> float:
    return float(server.weights.engine.weights["a.weight"][0])


def test_a_push_whose_reply_was_lost_is_recognised_by_its_id(replicas):
    a, b = replicas
    client, (_, wire_b) = trainer_client(a, b)

    def applied_then_cut(call, request, timeout):
        call(request, timeout)  # the push lands; the reply never reaches the trainer
        raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")

    wire_b.before_push = applied_then_cut
    assert client.push(weights(1.0), 1 << 20, 0, "step 1").weight_version == 1
    assert not client.lagging() and b.weights.gate.version == 1
    assert b.weights.current.push_id.startswith(client.writer + "-")


def test_a_foreign_push_that_takes_the_number_is_not_taken_for_the_trainers(replicas):
    a, b = replicas
    client, (_, wire_b) = trainer_client(a, b)
    client.push(weights(1.0), 1 << 20, 0, "step 1")

    def foreign_writer_first(call, request, timeout):
        # another writer pushes to b, numbered automatically: it takes 2, the trainer's next number
        call(push_requests(weights(99.0), note="someone else", push_id="other-writer-1"), timeout)
        raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")

    wire_b.before_push = foreign_writer_first
    client.push(weights(2.0), 1 << 20, 1, "step 2")
    assert b.weights.gate.version == 2 and served(b) == 99.0, "b serves the foreign weights as version 2"
    assert client.version == 2 and served(a) == 2.0
    assert "policy[1]" in client.lagging()[0], "b must not stay in rotation under the trainer's version number"
    client.recover()
    assert "did not make" in client.replicas[1].reason and not client.replicas[1].in_rotation
    assert served(b) == 99.0, "another writer's weights are never overwritten"


def test_an_operators_rollback_is_not_undone_by_recovery(replicas):
    a, b = replicas
    client, (_, wire_b) = trainer_client(a, b)
    client.push(weights(1.0), 1 << 20, 0, "step 1")
    wire_b.down = True
    client.push(weights(2.0), 1 << 20, 1, "step 2")  # b misses version 2 and leaves the rotation
    assert not client.replicas[1].in_rotation
    wire_b.down = False
    # the operator rolls b back to the start checkpoint: weight_version 0, highest 1, below the trainer's 2
    rolled = b.stub.Rollback(policy_pb2.RollbackRequest(version=0, reason="operator: bad weights"))
    assert (rolled.weight_version, rolled.previous_version) == (0, 1)
    status = b.stub.GetStatus(policy_pb2.GetStatusRequest())
    assert (status.weight_version, status.highest_version) == (0, 1)
    assert status.current.origin == policy_pb2.VERSION_ORIGIN_ROLLBACK
    loads = len(b.weights.engine.loads)
    client.recover()
    assert not client.replicas[1].in_rotation and "rolled back to version 0" in client.lagging()[0]
    assert b.weights.gate.version == 0 and served(b) == 0.0 and len(b.weights.engine.loads) == loads
    client.push(weights(3.0), 1 << 20, 2, "step 3")  # later pushes leave it alone too
    assert b.weights.gate.version == 0 and served(a) == 3.0


def test_a_restarted_replica_is_still_caught_up(replicas, tmp_path):
    a, b = replicas
    client, wires = trainer_client(a, b)
    client.push(weights(1.0), 1 << 20, 0, "step 1")
    wires[1].down = True
    client.push(weights(2.0), 1 << 20, 1, "step 2")
    fresh = policy(tmp_path, "b-restarted")  # the checkpoint's weights, version 0, nothing applied
    try:
        wires[1].stub, wires[1].down = fresh.stub, False
        client.recover()
        assert not client.lagging() and fresh.weights.gate.version == 2 and served(fresh) == 2.0
        assert fresh.weights.current.push_id.startswith(client.writer + "-")
    finally:
        fresh.close()
