"""The standalone FeedbackService over gRPC, on SQLite and on PostgreSQL: every kind, every refusal, exports, auth."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc
from services.common.client import open_channel
from services.common.security import ClientSecurity
from services.experience import database
from tests.integration.feedback_support import seed_samples, start_experience_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('feedback')}/experience.db"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    ids = seed_samples(url, prompts=3, per_prompt=3)
    process, address, metrics_url = start_experience_service(
        url, tmp_path_factory.mktemp("feedback-logs") / "experience.log", "--rate-limit", "4", "--rate-window-s", "600"
    )
    channel = open_channel(address, security=ClientSecurity())
    yield feedback_pb2_grpc.FeedbackServiceStub(channel), ids, channel, metrics_url
    channel.close()
    assert process.stop() == 0, process.log_tail()


def submit(stub, rater, **body):
    return stub.SubmitFeedback(fb.SubmitFeedbackRequest(rater_id=rater, body=fb.FeedbackBody(**body)), timeout=10)


def refusal(stub, rater, **body) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        submit(stub, rater, **body)
    return raised.value


def test_health_and_reflection(service):
    _, _, channel, _ = service
    assert (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service="rlhf.v1.FeedbackService"))
        .status
        == health_pb2.HealthCheckResponse.SERVING
    )
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    assert "rlhf.v1.FeedbackService" in {s.name for r in replies for s in r.list_services_response.service}


def test_each_kind_round_trips(service):
    stub, ids, _, _ = service
    a, b, c = ids[0]
    replies = [
        submit(stub, "kinds", rating=fb.Rating(sample_id=a, value=0.9, scale_min=0, scale_max=1)),
        submit(stub, "kinds", thumbs=fb.Thumbs(sample_id=b, up=False)),
        submit(stub, "kinds", pairwise=fb.PairwiseChoice(chosen_sample_id=a, rejected_sample_id=b)),
        submit(stub, "kinds2", ranking=fb.Ranking(sample_ids=[c, a, b])),
        submit(stub, "kinds2", correction=fb.Correction(sample_id=b, corrected_text="fixed")),
        submit(stub, "kinds2", comment=fb.Comment(sample_id=c, text="nice")),
    ]
    first = replies[0].cursor - 1
    export = stub.ExportFeedback(fb.ExportFeedbackRequest(since_cursor=first, limit=6))
    assert [r.feedback_id for r in export.records] == [r.feedback_id for r in replies]
    assert [r.kind for r in export.records] == [
        fb.FEEDBACK_KIND_RATING,
        fb.FEEDBACK_KIND_THUMBS,
        fb.FEEDBACK_KIND_PAIRWISE,
        fb.FEEDBACK_KIND_RANKING,
        fb.FEEDBACK_KIND_CORRECTION,
        fb.FEEDBACK_KIND_COMMENT,
    ]
    assert export.records[4].body.correction.corrected_text == "fixed"
    prefs = stub.ListPreferences(fb.ListPreferencesRequest(since_cursor=first))
    texts = {(p.chosen_text, p.rejected_text) for p in prefs.pairs}
    assert ("answer 0 to 0", "answer 1 to 0") in texts and ("fixed", "answer 1 to 0") in texts
    assert prefs.report.items_out == len(prefs.pairs) == 4
    by_texts = {(p.chosen_text, p.rejected_text): p for p in prefs.pairs}
    served = by_texts[("answer 0 to 0", "answer 1 to 0")]  # each side says which weight version served it
    assert served.HasField("chosen_weight_version") and served.HasField("rejected_weight_version")
    assert served.chosen_weight_version == served.rejected_weight_version == 0
    corrected = by_texts[("fixed", "answer 1 to 0")]  # a correction was never served
    assert not corrected.HasField("chosen_weight_version") and corrected.HasField("rejected_weight_version")
    ratings = stub.ListRatings(fb.ListRatingsRequest(since_cursor=first))
    assert {(r.sample_id, round(r.score, 3)) for r in ratings.ratings} == {(a, 0.9), (b, 0.0)}


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        ({"rating": fb.Rating(sample_id="SAMPLE0", value=9)}, grpc.StatusCode.INVALID_ARGUMENT, "outside the scale"),
        ({"thumbs": fb.Thumbs(sample_id="no-such-sample", up=True)}, grpc.StatusCode.NOT_FOUND, "no recorded sample"),
        (
            {"pairwise": fb.PairwiseChoice(chosen_sample_id="SAMPLE0", rejected_sample_id="OTHERPROMPT")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "different prompts",
        ),
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of"),
    ],
)
def test_invalid_feedback_gets_the_right_status(service, body, code, text):
    stub, ids, channel, _ = service
    fill = {"SAMPLE0": ids[1][0], "OTHERPROMPT": ids[2][0]}
    for message in body.values():
        for field in ("sample_id", "chosen_sample_id", "rejected_sample_id"):
            if hasattr(message, field) and getattr(message, field) in fill:
                setattr(message, field, fill[getattr(message, field)])
    error = refusal(stub, "invalid", **body)
    assert error.code() == code and text in error.details()
    assert (
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_duplicate_is_already_exists_and_rate_limit_is_resource_exhausted(service):
    stub, ids, _, metrics_url = service
    first = submit(stub, "dup", pairwise=fb.PairwiseChoice(chosen_sample_id=ids[1][0], rejected_sample_id=ids[1][1]))
    error = refusal(stub, "dup", pairwise=fb.PairwiseChoice(chosen_sample_id=ids[1][1], rejected_sample_id=ids[1][0]))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and first.feedback_id in error.details()

    for sample_id in ids[2]:
        submit(stub, "eager", thumbs=fb.Thumbs(sample_id=sample_id, up=True))
    submit(stub, "eager", rating=fb.Rating(sample_id=ids[2][0], value=3))
    error = refusal(stub, "eager", rating=fb.Rating(sample_id=ids[2][1], value=3))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4 submissions per 600 s" in error.details()
    retry_ms = dict(error.trailing_metadata())["retry-after-ms"]
    assert 0 < int(retry_ms) <= 600_000

    stats = stub.GetStats(fb.GetStatsRequest())
    rejected = {r.reason: r.count for r in stats.rejected}
    assert rejected["already_exists"] >= 1 and rejected["rate_limited"] >= 1
    assert stats.samples == 9 and stats.schema_revision == database.head_revision() == "0002"
    body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    assert 'rlhf_feedback_submissions_total{kind="rating",outcome="rate_limited"}' in body


def test_auth_scopes(tmp_path):
    """A `feedback` token may submit but not read exports; an `admin` token may read."""
    url = f"sqlite:///{tmp_path}/auth.db"
    ids = seed_samples(url, prompts=1, per_prompt=2)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        '[[tokens]]\nname = "rater-app"\ntoken_env = "FEEDBACK_TOKEN"\nscopes = ["feedback"]\n'
        '[[tokens]]\nname = "trainer"\ntoken_env = "ADMIN_TOKEN"\nscopes = ["admin"]\n'
    )
    process, address, _ = start_experience_service(
        url,
        tmp_path / "auth.log",
        "--auth-tokens-file",
        str(tokens),
        env={"FEEDBACK_TOKEN": "f-secret", "ADMIN_TOKEN": "a-secret"},
    )
    try:
        with open_channel(address, security=ClientSecurity(token="f-secret")) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            submit(stub, "app-user", thumbs=fb.Thumbs(sample_id=ids[0][0], up=True))
            with pytest.raises(grpc.RpcError) as denied:
                stub.ExportFeedback(fb.ExportFeedbackRequest())
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as denied:
                stub.SubmitGoldFeedback(
                    fb.SubmitFeedbackRequest(rater_id="g", body=fb.FeedbackBody(thumbs=fb.Thumbs(sample_id=ids[0][0])))
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with open_channel(address, security=ClientSecurity(token="a-secret")) as channel:
            assert (
                len(feedback_pb2_grpc.FeedbackServiceStub(channel).ExportFeedback(fb.ExportFeedbackRequest()).records)
                == 1
            )
    finally:
        assert process.stop() == 0, process.log_tail()
