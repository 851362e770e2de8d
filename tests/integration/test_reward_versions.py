"""Publishing reward-model versions at runtime on a real server, under concurrent load."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import open_channel
from tests.integration.reward_fixtures import build_tiny_classifier

pytestmark = pytest.mark.integration

MODEL = "swap-rm"
ITEMS = [
    reward_pb2.ScoreItem(prompt="Review Dune.", completion="A vast desert epic about power and ecology."),
    reward_pb2.ScoreItem(prompt="Review Emma.", completion="Good book."),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    return [build_tiny_classifier(root / f"v{seed}", seed=seed) for seed in (10, 11, 12)]


@pytest.fixture
def stubs(reward_server):
    with open_channel(reward_server.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel), reward_pb2_grpc.RewardAdminServiceStub(channel)


def _declaration(path) -> reward_pb2.ModelDeclaration:
    return reward_pb2.ModelDeclaration(name=MODEL, kind=reward_pb2.REWARD_KIND_CLASSIFIER, path=str(path))


class Load:
    """Threads scoring MODEL back to back (following the latest version) until stopped."""

    def __init__(self, address: str, threads: int) -> None:
        self.address, self.stop = address, threading.Event()
        self.seen: list[list[str]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        with open_channel(self.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            while not self.stop.is_set():
                try:
                    reply = stub.Score(reward_pb2.ScoreRequest(model=MODEL, items=ITEMS), timeout=30)
                    assert len(reply.scores) == len(ITEMS)
                    self.seen[index].append(reply.model_version)
                except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def count(self, version: str) -> int:
        return sum(seen.count(version) for seen in self.seen)

    def wait_for(self, version: str, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(version) < count and not self.errors:
            assert time.monotonic() < deadline, f"only {self.count(version)} replies from {version}"
            time.sleep(0.02)


def test_publishing_under_concurrent_load_drops_no_request(reward_server, stubs, checkpoints):
    scoring, admin = stubs
    first = admin.LoadModel(reward_pb2.LoadModelRequest(model=_declaration(checkpoints[0])), timeout=120).model
    assert (first.name, first.kind, list(first.loaded_versions)) == (
        MODEL,
        reward_pb2.REWARD_KIND_CLASSIFIER,
        [first.version],
    )
    load = Load(reward_server.address, threads=8)
    for thread in load.threads:
        thread.start()
    try:
        load.wait_for(first.version, 40)
        second = admin.PublishVersion(
            reward_pb2.PublishVersionRequest(model=_declaration(checkpoints[1]), expected_version=first.version),
            timeout=120,
        )
        load.wait_for(second.version, 40)
        third = admin.PublishVersion(reward_pb2.PublishVersionRequest(model=_declaration(checkpoints[2])), timeout=120)
        load.wait_for(third.version, 40)
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=60)
    assert load.errors == []
    assert second.changed and second.previous_version == first.version
    assert list(third.loaded_versions) == [second.version, third.version]  # keep_previous_versions=1
    versions = [first.version, second.version, third.version]
    assert len(set(versions)) == 3
    for seen in load.seen:  # each caller only ever moves forward
        order = [versions.index(v) for v in seen]
        assert order == sorted(order)


def test_pin_a_version_or_follow_the_latest(stubs, checkpoints):
    scoring, admin = stubs
    info = {m.name: m for m in scoring.ListModels(reward_pb2.ListModelsRequest(), timeout=30).models}[MODEL]
    older, latest = info.loaded_versions
    assert info.version == latest

    def score(version: str | None = None) -> reward_pb2.ScoreResponse:
        request = reward_pb2.ScoreRequest(model=MODEL, items=ITEMS)
        if version is not None:
            request.model_version = version
        return scoring.Score(request, timeout=30)

    pinned, following = score(older), score()
    assert (pinned.model_version, following.model_version) == (older, latest)
    assert list(pinned.scores) != list(following.scores)
    with pytest.raises(grpc.RpcError) as error:
        score("0" * 12)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert older in error.value.details() and latest in error.value.details()

    # Rolling back re-promotes the retained version without reloading it; its scores are unchanged.
    rollback = admin.PublishVersion(reward_pb2.PublishVersionRequest(model=_declaration(checkpoints[1])), timeout=120)
    assert (rollback.version, rollback.changed, list(rollback.loaded_versions)) == (older, True, [latest, older])
    assert score().model_version == older and list(score().scores) == list(pinned.scores)

    with pytest.raises(grpc.RpcError) as error:
        admin.PublishVersion(
            reward_pb2.PublishVersionRequest(model=_declaration(checkpoints[2]), expected_version=latest), timeout=60
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_admin_errors_leave_the_service_serving(stubs, tmp_path):
    scoring, admin = stubs
    missing = reward_pb2.ModelDeclaration(name="ghost", kind=reward_pb2.REWARD_KIND_CLASSIFIER, path=str(tmp_path))
    with pytest.raises(grpc.RpcError) as error:
        admin.LoadModel(reward_pb2.LoadModelRequest(model=missing), timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no config.json" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        admin.LoadModel(reward_pb2.LoadModelRequest(model=_declaration("ignored")), timeout=60)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as error:
        admin.UnloadModel(reward_pb2.UnloadModelRequest(model="tiny-rm"), timeout=60)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # a member of tiny-ensemble
    assert len(scoring.Score(reward_pb2.ScoreRequest(model="tiny-rm", items=ITEMS), timeout=30).scores) == 2


def test_unload_removes_the_model(stubs):
    scoring, admin = stubs
    unloaded = admin.UnloadModel(reward_pb2.UnloadModelRequest(model=MODEL), timeout=120)
    assert len(unloaded.unloaded_versions) == 2
    assert MODEL not in {m.name for m in scoring.ListModels(reward_pb2.ListModelsRequest(), timeout=30).models}
    with pytest.raises(grpc.RpcError) as error:
        scoring.Score(reward_pb2.ScoreRequest(model=MODEL, items=ITEMS), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
