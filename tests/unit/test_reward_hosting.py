"""Versioned hosting without gRPC: publish, pin, follow-latest, drain, rollback, unload."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.reward.backend import RewardItem
from services.reward.batcher import BatcherConfig
from services.reward.ensemble import EnsembleSpec, MemberRef
from services.reward.hosting import AlreadyExists, ModelHost
from services.reward.registry import ModelSpec
from services.reward.rules import RulesConfig, RulesReward

ITEM = [RewardItem("p", "one two three")]


def _spec(target_words: int, name: str = "length") -> ModelSpec:
    return ModelSpec(name, "rules", rules=RulesConfig(target_words=target_words))


def _version(target_words: int) -> str:
    return RulesReward("x", RulesConfig(target_words=target_words)).version


class GatedReward:
    """A rules-like backend whose batches wait until the test opens the gate."""

    kind, uses_reference, description = "rules", False, "gated"

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.entered, self.gate = threading.Event(), threading.Event()

    def score(self, items):
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        return [1.0] * len(items)


def _run(scenario, keep_previous_versions: int = 1):
    async def wrapper():
        host = ModelHost(BatcherConfig(max_wait_ms=0), keep_previous_versions=keep_previous_versions, drain_timeout_s=5)
        host.attach([RulesReward("length", RulesConfig(target_words=3))], [_spec(3)])
        try:
            return await scenario(host)
        finally:
            await host.close()

    return asyncio.run(wrapper())


async def _score(host: ModelHost, version: str | None = None) -> tuple[str, float]:
    with host.lease([MemberRef("length", version)]) as (hosted,):
        (score,) = await hosted.score(ITEM)
        return hosted.version, score


def test_publish_switches_latest_and_keeps_the_previous_version_pinnable():
    async def scenario(host: ModelHost):
        first = await _score(host)
        result = await host.publish(_spec(6))
        return first, result, await _score(host), await _score(host, _version(3)), list(host.models["length"].versions)

    first, result, latest, pinned, loaded = _run(scenario)
    assert first == (_version(3), 1.0)
    assert (result.version, result.previous_version, result.changed) == (_version(6), _version(3), True)
    assert latest == (_version(6), 0.5)  # 3 words of a 6-word target
    assert pinned == (_version(3), 1.0)
    assert loaded == [_version(3), _version(6)]


def test_versions_beyond_keep_previous_are_unloaded():
    async def scenario(host: ModelHost):
        await host.publish(_spec(6))
        await host.publish(_spec(9))
        await asyncio.sleep(0.05)  # the retired version closes in the background
        with pytest.raises(NotFound, match="no loaded version"):
            await _score(host, _version(3))
        return list(host.models["length"].versions)

    assert _run(scenario) == [_version(6), _version(9)]
    assert _run(lambda host: _publish_twice_keep_none(host), keep_previous_versions=0) == [_version(9)]


async def _publish_twice_keep_none(host: ModelHost) -> list[str]:
    await host.publish(_spec(6))
    await host.publish(_spec(9))
    return list(host.models["length"].versions)


def test_republishing_a_loaded_version_is_a_rollback_not_a_reload():
    async def scenario(host: ModelHost):
        await host.publish(_spec(6))
        old = host.models["length"].versions[_version(3)]
        rollback = await host.publish(_spec(3))
        same = await host.publish(_spec(3))
        return old, host.models["length"].versions[_version(3)], rollback, same

    old, now, rollback, same = _run(scenario)
    assert now is old
    assert (rollback.version, rollback.changed, rollback.loaded_versions) == (
        _version(3),
        True,
        (_version(6), _version(3)),
    )
    assert (same.changed, same.previous_version) == (False, _version(3))


def test_a_replaced_version_finishes_its_in_flight_requests_before_closing():
    async def scenario(host: ModelHost):
        gated = GatedReward("gated", "v1")
        host.attach([gated], [ModelSpec("gated", "rules")])
        host.keep_previous_versions = 0
        with host.lease([MemberRef("gated")]) as (old,):
            in_flight = asyncio.ensure_future(old.score(ITEM))
            assert await asyncio.to_thread(gated.entered.wait, 5)
            await host.publish(ModelSpec("gated", "rules", rules=RulesConfig(target_words=3)))
            # The new version serves at once while the old one is still busy.
            new_version, _ = await _score_gated(host)
            assert old.retiring and not old.batcher._closed
            gated.gate.set()
            result = await in_flight
        await asyncio.sleep(0.05)
        return result, new_version, old.batcher._closed

    result, new_version, closed = _run(scenario)
    assert result == [1.0]
    assert new_version == _version(3)
    assert closed


async def _score_gated(host: ModelHost) -> tuple[str, float]:
    with host.lease([MemberRef("gated")]) as (hosted,):
        (score,) = await hosted.score(ITEM)
        return hosted.version, score


def test_publish_checks_kind_expected_version_and_name():
    async def scenario(host: ModelHost):
        with pytest.raises(FailedPrecondition, match="is at version"):
            await host.publish(_spec(6), expected_version="0" * 12)
        with pytest.raises(FailedPrecondition, match="rules model"):
            await host.publish(ModelSpec("length", "classifier", path=None))
        with pytest.raises(NotFound, match="use LoadModel"):
            await host.publish(_spec(6, name="other"))
        with pytest.raises(AlreadyExists):
            await host.load_model(_spec(6))
        with pytest.raises(InvalidArgument, match="cannot load model 'rm'"):
            await host.load_model(ModelSpec("rm", "classifier", path=__import__("pathlib").Path("/nonexistent")))
        return await host.publish(_spec(6), expected_version=_version(3))

    assert _run(scenario).version == _version(6)


def test_unload_a_version_or_the_whole_model():
    async def scenario(host: ModelHost):
        await host.publish(_spec(6))
        with pytest.raises(FailedPrecondition, match="latest version"):
            await host.unload("length", _version(6))
        assert await host.unload("length", _version(3)) == [_version(3)]
        loaded = await host.load_model(_spec(4, name="other"))
        host.ensembles["both"] = EnsembleSpec("both", (MemberRef("length"), MemberRef("other")))
        with pytest.raises(FailedPrecondition, match="member of the configured ensembles \\['both'\\]"):
            await host.unload("other")
        del host.ensembles["both"]
        gone = await host.unload("other")
        with pytest.raises(NotFound, match="no reward model named 'other'"):
            await _score_named(host, "other")
        return loaded.latest, gone

    latest, gone = _run(scenario)
    assert gone == [latest]


async def _score_named(host: ModelHost, name: str) -> None:
    with host.lease([MemberRef(name)]) as (hosted,):
        await hosted.score(ITEM)


def test_leases_fail_before_loading_and_release_on_error():
    async def scenario():
        host = ModelHost(BatcherConfig())
        with pytest.raises(Unavailable, match="still loading"):
            host.acquire("length")
        host.attach([RulesReward("length", RulesConfig(target_words=3))])
        with pytest.raises(NotFound):
            with host.lease([MemberRef("length"), MemberRef("absent")]):
                pass
        in_flight = host.models["length"].current.in_flight
        await host.close()
        return in_flight

    assert asyncio.run(scenario()) == 0


def test_scores_feed_the_version_statistics():
    async def scenario(host: ModelHost):
        with host.lease([MemberRef("length")]) as (hosted,):
            await hosted.score([RewardItem("p", "one two three"), RewardItem("p", "one")])
            return hosted.stats.snapshot()

    stats = _run(scenario)
    assert (stats.count, stats.min, stats.max) == (2, pytest.approx(1 / 3), 1.0)
