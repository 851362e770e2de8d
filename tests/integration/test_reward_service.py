"""The reward service as callers see it: a real server process on loopback."""

from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import open_channel

pytestmark = pytest.mark.integration

MODELS = ("similarity", "tiny-rm", "tiny-rm-b", "length")


@pytest.fixture
def stub(reward_server):
    with open_channel(reward_server.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def _items(n: int) -> list[reward_pb2.ScoreItem]:
    return [
        reward_pb2.ScoreItem(prompt=f"Recommend a book, case {i}.", completion=f"Read a good book number {i}.")
        for i in range(n)
    ]


def _metric(url: str, sample_name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _assert_serving(stub) -> None:
    reply = stub.Score(reward_pb2.ScoreRequest(model="length", items=_items(1)), timeout=30)
    assert len(reply.scores) == 1


@pytest.mark.parametrize("model", MODELS)
def test_score_returns_one_score_per_item_with_model_and_version(stub, model):
    reply = stub.Score(reward_pb2.ScoreRequest(model=model, items=_items(3)), timeout=60)
    assert len(reply.scores) == 3
    assert reply.model == model
    assert len(reply.model_version) == 12
    int(reply.model_version, 16)


def test_rules_model_scores_by_its_rules(stub):
    items = [
        reward_pb2.ScoreItem(prompt="p", completion="one two three four five six seven eight nine book"),
        reward_pb2.ScoreItem(prompt="p", completion="I hate it"),
    ]
    reply = stub.Score(reward_pb2.ScoreRequest(model="length", items=items), timeout=30)
    assert reply.scores[0] == pytest.approx(2.0)  # 10 words = target (1) + required "book" (1)
    assert reply.scores[1] == pytest.approx(0.3 - 1.0)  # 3 of 10 words, banned "hate"


def test_similarity_identical_beats_unrelated(stub):
    text = "The cat sat quietly on the warm windowsill."
    items = [
        reward_pb2.ScoreItem(prompt="Describe the cat.", completion=text, reference=text),
        reward_pb2.ScoreItem(
            prompt="Describe the cat.", completion=text, reference="Quarterly tax filings are due in April."
        ),
    ]
    identical, unrelated = stub.Score(reward_pb2.ScoreRequest(model="similarity", items=items), timeout=60).scores
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert identical > unrelated


def test_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Score(reward_pb2.ScoreRequest(model="nope", items=_items(1)), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "similarity" in error.value.details()


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        ([], "empty"),
        (_items(1025), "max_items_per_request=1024"),
        ([reward_pb2.ScoreItem(prompt="p", completion="x" * 20001)], "max_text_chars=20000"),
    ],
    ids=["empty", "too-many-items", "too-long-text"],
)
def test_invalid_requests_are_rejected_and_server_keeps_serving(stub, items, needle):
    with pytest.raises(grpc.RpcError) as error:
        stub.Score(reward_pb2.ScoreRequest(model="length", items=items), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in error.value.details()
    _assert_serving(stub)


def test_list_models(stub):
    listed = stub.ListModels(reward_pb2.ListModelsRequest(), timeout=30)
    models = {m.name: m for m in listed.models}
    assert set(MODELS) <= set(models)  # other tests may load more at runtime
    assert [e.name for e in listed.ensembles] == ["tiny-ensemble"]
    assert models["similarity"].kind == reward_pb2.REWARD_KIND_SIMILARITY
    assert models["similarity"].uses_reference
    assert models["tiny-rm"].kind == reward_pb2.REWARD_KIND_CLASSIFIER
    assert models["length"].kind == reward_pb2.REWARD_KIND_RULES
    assert all(m.description and m.max_batch_size == 32 for m in models.values())
    assert models["similarity"].max_batch_tokens == 16384 and models["length"].max_batch_tokens == 0
    assert list(models["tiny-rm"].loaded_versions) == [models["tiny-rm"].version]


def test_health_and_reflection(reward_server):
    with open_channel(reward_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rlhf.v1.RewardService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"rlhf.v1.RewardService", "rlhf.v1.RewardAdminService"} <= names


def test_score_batches_concurrent_callers(reward_server, stub):
    model, callers = "similarity", 16
    count_before = _metric(reward_server.metrics_url, "rlhf_reward_batch_size_count", model=model)
    sum_before = _metric(reward_server.metrics_url, "rlhf_reward_batch_size_sum", model=model)
    barrier = threading.Barrier(callers)
    results: list[int | BaseException] = [0] * callers

    def call(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            reply = stub.Score(reward_pb2.ScoreRequest(model=model, items=_items(1)), timeout=60)
            results[index] = len(reply.scores)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [1] * callers
    batches = _metric(reward_server.metrics_url, "rlhf_reward_batch_size_count", model=model) - count_before
    items = _metric(reward_server.metrics_url, "rlhf_reward_batch_size_sum", model=model) - sum_before
    assert items == callers
    assert 1 <= batches < callers, f"{callers} concurrent requests ran in {batches} batches"


def test_metrics_endpoint_exposes_grpc_and_reward_metrics(reward_server, stub):
    _assert_serving(stub)
    with urllib.request.urlopen(reward_server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert "grpc_server_handled_total" in text
    assert _metric(reward_server.metrics_url, "rlhf_reward_model_info", model="tiny-rm", kind="classifier") == 1
    for name in ("rlhf_reward_items_total", "rlhf_reward_batch_seconds_bucket", "rlhf_reward_queue_items"):
        assert name in text
