"""Compare, ensembles, whitening and score statistics on a real server."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.client import open_channel

pytestmark = pytest.mark.integration

PROMPT = "Write a short review of Frankenstein by Mary Shelley."
COMPLETIONS = [
    "Frankenstein is far more thoughtful than its monster-movie reputation suggests.",
    "Good book.",
    "The creature's account of loneliness is the emotional heart of the novel.",
    "Here is a pancake recipe instead.",
]


@pytest.fixture
def stub(reward_server):
    with open_channel(reward_server.address) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def _scores(stub, model: str, completions=COMPLETIONS) -> list[float]:
    items = [reward_pb2.ScoreItem(prompt=PROMPT, completion=c) for c in completions]
    return list(stub.Score(reward_pb2.ScoreRequest(model=model, items=items), timeout=60).scores)


@pytest.mark.parametrize("model", ["tiny-rm", "tiny-ensemble"])
def test_compare_agrees_with_the_sign_of_the_score_difference(stub, model):
    pairs = [(a, b) for a in COMPLETIONS for b in COMPLETIONS if a != b]
    reply = stub.Compare(
        reward_pb2.CompareRequest(
            model=model,
            pairs=[reward_pb2.ComparePair(prompt=PROMPT, completion_a=a, completion_b=b) for a, b in pairs],
        ),
        timeout=60,
    )
    scores = dict(zip(COMPLETIONS, _scores(stub, model), strict=True))
    assert reply.model == model and len(reply.prob_a_preferred) == len(pairs)
    for (a, b), p, sa, sb in zip(pairs, reply.prob_a_preferred, reply.scores_a, reply.scores_b, strict=True):
        assert (sa, sb) == pytest.approx((scores[a], scores[b]), abs=1e-5)
        assert p == pytest.approx(1 / (1 + math.exp(-(sa - sb))), abs=1e-5)
        assert (p > 0.5) == (scores[a] > scores[b])
    # Swapping A and B gives the complementary probability.
    forward = dict(zip(pairs, reply.prob_a_preferred, strict=True))
    for a, b in pairs:
        assert forward[(a, b)] + forward[(b, a)] == pytest.approx(1.0, abs=1e-5)


def test_configured_ensemble_returns_member_scores(stub):
    items = [reward_pb2.ScoreItem(prompt=PROMPT, completion=c) for c in COMPLETIONS]
    reply = stub.Score(
        reward_pb2.ScoreRequest(model="tiny-ensemble", items=items, return_member_scores=True), timeout=60
    )
    assert [m.model for m in reply.members] == ["tiny-rm", "tiny-rm-b"]
    listed = {m.name: m.version for m in stub.ListModels(reward_pb2.ListModelsRequest(), timeout=30).models}
    assert [m.model_version for m in reply.members] == [listed["tiny-rm"], listed["tiny-rm-b"]]
    members = np.array([list(m.scores) for m in reply.members])
    assert members[0] == pytest.approx(_scores(stub, "tiny-rm"), abs=1e-5)
    assert list(reply.scores) == pytest.approx((members.mean(0) - 0.5 * members.std(0)).tolist(), abs=1e-5)


def test_per_request_ensemble_min_with_whitening(stub):
    ensemble = reward_pb2.EnsembleSpec(
        members=[reward_pb2.ModelRef(name="tiny-rm"), reward_pb2.ModelRef(name="length")],
        aggregation=reward_pb2.ENSEMBLE_AGGREGATION_MIN,
    )
    items = [reward_pb2.ScoreItem(prompt=PROMPT, completion=c) for c in COMPLETIONS]
    reply = stub.Score(
        reward_pb2.ScoreRequest(ensemble=ensemble, items=items, return_member_scores=True, whiten=True), timeout=60
    )
    members = np.array([list(m.scores) for m in reply.members])
    assert list(reply.scores) == pytest.approx(members.min(0).tolist(), abs=1e-5)
    whitened = np.array([list(m.whitened_scores) for m in reply.members])
    assert list(reply.whitened_scores) == pytest.approx(whitened.min(0).tolist(), abs=1e-5)
    assert reply.model == "ensemble"


def test_model_stats_track_scores_and_whiten_them(stub):
    scores = _scores(stub, "tiny-rm-b")
    stats = stub.GetModelStats(reward_pb2.GetModelStatsRequest(model="tiny-rm-b"), timeout=30)
    (entry,) = stats.versions
    assert entry.latest and entry.count >= len(scores) and entry.std > 0
    assert entry.min <= min(scores) and max(scores) <= entry.max
    items = [reward_pb2.ScoreItem(prompt=PROMPT, completion=COMPLETIONS[0])]
    reply = stub.Score(reward_pb2.ScoreRequest(model="tiny-rm-b", items=items, whiten=True), timeout=60)
    after = stub.GetModelStats(reward_pb2.GetModelStatsRequest(model="tiny-rm-b"), timeout=30).versions[0]
    assert after.count == entry.count + 1
    assert reply.whitened_scores[0] == pytest.approx((reply.scores[0] - after.mean) / after.std, abs=1e-4)
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStats(reward_pb2.GetModelStatsRequest(model="nope"), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
