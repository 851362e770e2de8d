"""The servicer's validation and replies, called directly (no gRPC transport)."""

from __future__ import annotations

import asyncio

import pytest

from rlhf.v1 import reward_pb2
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.reward.batcher import BatcherConfig
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.rules import RulesConfig, RulesReward
from services.reward.server import RewardServicer

CONFIG = RewardConfig(max_items_per_request=3, max_text_chars=10, max_queue_items=8, max_wait_ms=0)


def _run(scenario, ready: bool = True):
    async def wrapper():
        host = ModelHost(BatcherConfig(max_batch_size=4, max_wait_ms=0, max_queue_items=8))
        if ready:
            host.attach([RulesReward("length", RulesConfig(target_words=2))])
        try:
            return await scenario(RewardServicer(CONFIG, host))
        finally:
            await host.close()

    return asyncio.run(wrapper())


def _request(model: str = "length", *completions: str) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        model=model, items=[reward_pb2.ScoreItem(prompt="p", completion=c) for c in completions]
    )


def test_score_replies_with_scores_model_and_version():
    reply = _run(lambda s: s.Score(_request("length", "one two", "one"), None))
    assert list(reply.scores) == pytest.approx([1.0, 0.5])
    assert reply.model == "length"
    assert reply.model_version == RulesReward("length", RulesConfig(target_words=2)).version


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (_request("nope", "x"), NotFound, "no reward model named 'nope'; hosted models: \\['length'\\]"),
        (_request("length"), InvalidArgument, "items is empty"),
        (_request("length", "a", "b", "c", "d"), InvalidArgument, "4 > max_items_per_request=3"),
        (
            _request("length", "x" * 11),
            InvalidArgument,
            "items\\[0\\].completion has 11 characters > max_text_chars=10",
        ),
        (
            reward_pb2.ScoreRequest(model="length", items=[reward_pb2.ScoreItem(completion="ok", reference="r" * 11)]),
            InvalidArgument,
            "items\\[0\\].reference",
        ),
    ],
)
def test_invalid_requests(request_, error, message):
    with pytest.raises(error, match=message):
        _run(lambda s: s.Score(request_, None))


def test_score_before_models_load_is_unavailable():
    with pytest.raises(Unavailable, match="still loading"):
        _run(lambda s: s.Score(_request("length", "x"), None), ready=False)


def test_list_models():
    (info,) = _run(lambda s: s.ListModels(reward_pb2.ListModelsRequest(), None)).models
    assert (info.name, info.kind, info.max_batch_size, info.uses_reference) == (
        "length",
        reward_pb2.REWARD_KIND_RULES,
        4,
        False,
    )
    assert len(info.version) == 12 and "2 words" in info.description
