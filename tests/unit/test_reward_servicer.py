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


# ---- Compare, ensembles, whitening, quotas, admin ------------------------------------------

from services.common.errors import FailedPrecondition  # noqa: E402
from services.reward.ensemble import EnsembleSpec, MemberRef  # noqa: E402
from services.reward.overload import RETRY_AFTER_KEY, Overloaded  # noqa: E402
from services.reward.quotas import TenantLimits, TenantQuotas  # noqa: E402
from services.reward.scoring import sigmoid  # noqa: E402
from services.reward.server import RewardAdminServicer  # noqa: E402


class FakeContext:
    """The two ServicerContext methods the servicers use."""

    def __init__(self, tenant: str | None = None) -> None:
        self.metadata = (("x-rlhf-tenant", tenant),) if tenant else ()
        self.trailing: tuple = ()

    def invocation_metadata(self):
        return self.metadata

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = tuple(metadata)


WIDE = RewardConfig(max_wait_ms=0)


def _run_many(scenario, quotas: TenantQuotas | None = None):
    """Hosts rules models `short` (target 2 words), `long` (target 6) and ensemble `both` (mean - std)."""

    async def wrapper():
        host = ModelHost(BatcherConfig(max_batch_size=8, max_wait_ms=0))
        host.attach(
            [RulesReward("short", RulesConfig(target_words=2)), RulesReward("long", RulesConfig(target_words=6))],
            ensembles=[EnsembleSpec("both", (MemberRef("short"), MemberRef("long")), "mean_minus_std", 1.0)],
        )
        try:
            return await scenario(RewardServicer(WIDE, host, quotas), RewardAdminServicer(WIDE, host))
        finally:
            await host.close()

    return asyncio.run(wrapper())


def _compare(model: str = "short", **kwargs) -> reward_pb2.CompareRequest:
    return reward_pb2.CompareRequest(
        model=model,
        pairs=[
            reward_pb2.ComparePair(prompt="p", completion_a="one two", completion_b="one two three four five six"),
            reward_pb2.ComparePair(prompt="p", completion_a="one", completion_b="one"),
        ],
        **kwargs,
    )


def test_compare_is_the_sigmoid_of_the_score_difference():
    reply = _run_many(lambda s, _: s.Compare(_compare("short"), FakeContext()))
    assert list(reply.scores_a) == pytest.approx([1.0, 0.5])
    assert list(reply.scores_b) == pytest.approx([0.0, 0.5])  # 6 words = 3x the 2-word target
    assert list(reply.prob_a_preferred) == pytest.approx([sigmoid(1.0), 0.5])
    assert reply.model == "short" and reply.model_version == RulesReward("x", RulesConfig(target_words=2)).version


def test_configured_ensemble_returns_member_scores_and_aggregate():
    request = reward_pb2.ScoreRequest(
        model="both", items=[reward_pb2.ScoreItem(prompt="p", completion="one two three")], return_member_scores=True
    )
    reply = _run_many(lambda s, _: s.Score(request, FakeContext()))
    short, long_ = reply.members
    assert (short.model, long_.model) == ("short", "long")
    assert list(short.scores) == pytest.approx([0.5]) and list(long_.scores) == pytest.approx([0.5])
    assert list(reply.scores) == pytest.approx([0.5])  # members agree: no uncertainty penalty
    assert reply.model == "both" and len(reply.model_version) == 12


def test_per_request_ensemble_with_min_and_pinned_member():
    version = RulesReward("x", RulesConfig(target_words=6)).version
    request = reward_pb2.ScoreRequest(
        items=[reward_pb2.ScoreItem(prompt="p", completion="one two")],
        ensemble=reward_pb2.EnsembleSpec(
            members=[reward_pb2.ModelRef(name="short"), reward_pb2.ModelRef(name="long", version=version)],
            aggregation=reward_pb2.ENSEMBLE_AGGREGATION_MIN,
        ),
    )
    reply = _run_many(lambda s, _: s.Score(request, FakeContext()))
    assert list(reply.scores) == pytest.approx([1 / 3])  # min(1.0, 2/6)
    assert reply.model == "ensemble" and not reply.members  # members only on request


def test_whitened_scores_use_the_running_statistics():
    async def scenario(servicer, _):
        items = [reward_pb2.ScoreItem(prompt="p", completion=c) for c in ("one", "one two", "a b c")]
        await servicer.Score(reward_pb2.ScoreRequest(model="short", items=items), FakeContext())
        reply = await servicer.Score(
            reward_pb2.ScoreRequest(model="short", items=items[:1], whiten=True), FakeContext()
        )
        stats = await servicer.GetModelStats(reward_pb2.GetModelStatsRequest(model="short"), FakeContext())
        return reply, stats

    reply, stats = _run_many(scenario)
    (entry,) = stats.versions
    assert entry.count == 4 and entry.latest
    assert list(reply.whitened_scores) == pytest.approx([(0.5 - entry.mean) / entry.std])


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem()]), InvalidArgument, "model is empty"),
        (
            reward_pb2.ScoreRequest(model="both", model_version="abc", items=[reward_pb2.ScoreItem()]),
            InvalidArgument,
            "is an ensemble",
        ),
        (
            reward_pb2.ScoreRequest(model="short", model_version="abc", items=[reward_pb2.ScoreItem()]),
            NotFound,
            "no loaded version 'abc'",
        ),
        (
            reward_pb2.ScoreRequest(
                model="short",
                items=[reward_pb2.ScoreItem()],
                ensemble=reward_pb2.EnsembleSpec(members=[reward_pb2.ModelRef(name="short")]),
            ),
            InvalidArgument,
            "either model or ensemble",
        ),
        (
            reward_pb2.ScoreRequest(
                items=[reward_pb2.ScoreItem()],
                ensemble=reward_pb2.EnsembleSpec(
                    members=[reward_pb2.ModelRef(name="short"), reward_pb2.ModelRef(name="long")]
                ),
            ),
            InvalidArgument,
            "aggregation must be one of",
        ),
        (
            reward_pb2.ScoreRequest(
                items=[reward_pb2.ScoreItem()],
                ensemble=reward_pb2.EnsembleSpec(
                    members=[reward_pb2.ModelRef(name="short"), reward_pb2.ModelRef(name="nope")],
                    aggregation=reward_pb2.ENSEMBLE_AGGREGATION_MEAN,
                ),
            ),
            NotFound,
            "no reward model named 'nope'",
        ),
    ],
)
def test_invalid_targets(request_, error, message):
    with pytest.raises(error, match=message):
        _run_many(lambda s, _: s.Score(request_, FakeContext()))


def test_over_quota_tenant_gets_resource_exhausted_with_retry_metadata_others_are_served():
    quotas = TenantQuotas(TenantLimits(), {"small": TenantLimits(items_per_s=1, burst_items=2)})

    async def scenario(servicer, _):
        request = reward_pb2.ScoreRequest(model="both", items=[reward_pb2.ScoreItem(prompt="p", completion="x")])
        await servicer.Score(request, FakeContext("small"))  # 1 item x 2 members = the whole burst
        refused = FakeContext("small")
        with pytest.raises(Overloaded, match="'small' is over its rate limit") as error:
            await servicer.Score(request, refused)
        served = await servicer.Score(request, FakeContext("big"))
        return error.value, refused.trailing, served

    error, trailing, served = _run_many(scenario, quotas)
    assert trailing == ((RETRY_AFTER_KEY, str(error.retry_after_ms)),)
    assert 1 <= error.retry_after_ms <= 2000
    assert len(served.scores) == 1


def test_admin_load_publish_unload_rules_models():
    async def scenario(servicer, admin):
        declaration = reward_pb2.ModelDeclaration(
            name="words", kind=reward_pb2.REWARD_KIND_RULES, rules=reward_pb2.RulesDeclaration(target_words=4)
        )
        loaded = await admin.LoadModel(reward_pb2.LoadModelRequest(model=declaration), FakeContext())
        declaration.rules.required_words.append("book")
        published = await admin.PublishVersion(reward_pb2.PublishVersionRequest(model=declaration), FakeContext())
        item = [reward_pb2.ScoreItem(prompt="p", completion="a good book here")]
        latest = await servicer.Score(reward_pb2.ScoreRequest(model="words", items=item), FakeContext())
        pinned = await servicer.Score(
            reward_pb2.ScoreRequest(model="words", items=item, model_version=loaded.model.version), FakeContext()
        )
        with pytest.raises(FailedPrecondition, match="latest version"):
            await admin.UnloadModel(
                reward_pb2.UnloadModelRequest(model="words", version=published.version), FakeContext()
            )
        unloaded = await admin.UnloadModel(reward_pb2.UnloadModelRequest(model="words"), FakeContext())
        listed = await servicer.ListModels(reward_pb2.ListModelsRequest(), FakeContext())
        return loaded, published, latest, pinned, unloaded, listed

    loaded, published, latest, pinned, unloaded, listed = _run_many(scenario)
    assert loaded.model.name == "words" and loaded.model.kind == reward_pb2.REWARD_KIND_RULES
    assert published.previous_version == loaded.model.version and published.changed
    assert list(published.loaded_versions) == [loaded.model.version, published.version]
    assert (latest.model_version, list(latest.scores)) == (published.version, pytest.approx([2.0]))
    assert (pinned.model_version, list(pinned.scores)) == (loaded.model.version, pytest.approx([1.0]))
    assert set(unloaded.unloaded_versions) == {loaded.model.version, published.version}
    assert [m.name for m in listed.models] == ["long", "short"]
    assert [e.name for e in listed.ensembles] == ["both"]


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (reward_pb2.ModelDeclaration(name="x"), "model.kind must be one of"),
        (
            reward_pb2.ModelDeclaration(name="x", kind=reward_pb2.REWARD_KIND_CLASSIFIER),
            "a classifier needs path",
        ),
        (
            reward_pb2.ModelDeclaration(
                name="x", kind=reward_pb2.REWARD_KIND_SIMILARITY, rules=reward_pb2.RulesDeclaration(target_words=3)
            ),
            "only for REWARD_KIND_RULES",
        ),
        (reward_pb2.ModelDeclaration(name="x", kind=reward_pb2.REWARD_KIND_RULES), "declares no rules"),
        (
            reward_pb2.ModelDeclaration(name="bad name", kind=reward_pb2.REWARD_KIND_RULES),
            "name must be",
        ),
    ],
)
def test_admin_rejects_invalid_declarations(declaration, message):
    with pytest.raises(InvalidArgument, match=message):
        _run_many(lambda _, admin: admin.LoadModel(reward_pb2.LoadModelRequest(model=declaration), FakeContext()))


def test_admin_paths_must_stay_inside_model_root(tmp_path):
    from services.reward.messages import model_spec

    declaration = reward_pb2.ModelDeclaration(name="x", kind=reward_pb2.REWARD_KIND_CLASSIFIER, path="../outside")
    with pytest.raises(InvalidArgument, match="outside the server's model_root"):
        model_spec(declaration, str(tmp_path))
    declaration.path = "rm/v0001"
    assert model_spec(declaration, str(tmp_path)).path == (tmp_path / "rm/v0001").resolve()
