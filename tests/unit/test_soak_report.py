"""The soak's books: restart schedule, per-RPC success, longest unavailability, push identity (issue 16)."""

from __future__ import annotations

import itertools
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
import torch

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.weight_stream import push_requests
from services.loadtest.soak import (
    RESTART_SCHEDULE,
    RPC_SERVICE,
    SERVICES,
    Availability,
    Soak,
    SoakSettings,
    Tally,
    audit_history,
    push_verdict,
)


def test_schedule_sigkills_and_sigterms_every_service():
    services = ("policy", "reward", "feedback")
    assert set(RESTART_SCHEDULE) == {(name, kind) for name in services for kind in ("sigkill", "sigterm")}
    assert len(RESTART_SCHEDULE) == 6
    assert all(a[0] != b[0] for a, b in itertools.pairwise(RESTART_SCHEDULE)), "no service twice in a row"
    assert set(RPC_SERVICE.values()) == set(SERVICES)


def test_success_is_reported_per_rpc():
    tally = Tally(sent=30, succeeded=20)
    tally.failed["UNAVAILABLE"] = 10
    assert tally.as_dict() == {"sent": 30, "succeeded": 20, "success_share": 0.6667, "failed": {"UNAVAILABLE": 10}}
    assert Tally().as_dict()["success_share"] is None


def test_longest_unavailability_runs_from_last_success_to_next():
    a = Availability()
    a.succeeded(10.0)
    a.failed(11.0, run_started=0.0)
    a.failed(14.0, run_started=0.0)
    a.succeeded(17.5)  # out from 10.0 (last success) to 17.5
    a.succeeded(18.0)
    a.failed(19.0, run_started=0.0)
    a.succeeded(20.0)  # 2 s
    assert a.as_dict(now=30.0, run_started=0.0) == {
        "longest_unavailable_s": 7.5,
        "unavailable_total_s": 9.5,
        "available_share": round(1 - 9.5 / 30, 4),
        "outages": 2,
        "down_at_end": False,
    }
    a.failed(25.0, run_started=0.0)
    assert a.as_dict(now=40.0, run_started=0.0) == {
        "longest_unavailable_s": 20.0,
        "unavailable_total_s": 29.5,
        "available_share": round(1 - 29.5 / 40, 4),
        "outages": 3,
        "down_at_end": True,
    }


def test_failures_before_any_success_count_from_the_start():
    a = Availability()
    a.failed(3.0, run_started=1.0)
    a.succeeded(9.0)
    assert a.as_dict(now=9.0, run_started=1.0)["longest_unavailable_s"] == 8.0
    assert Availability().as_dict(now=5.0, run_started=1.0)["available_share"] == 1.0


OURS, THEIRS = b"\x01" * 16, b"\x02" * 16  # XXH3-128 digests, as the server reports them in `digest`


def _record(version: int, push_id: str = "", digest: bytes = b"") -> policy_pb2.WeightVersionInfo:
    return policy_pb2.WeightVersionInfo(version=version, push_id=push_id, digest=digest)


def _status(current: policy_pb2.WeightVersionInfo, *restorable) -> policy_pb2.GetStatusResponse:
    return policy_pb2.GetStatusResponse(
        weight_version=current.version, highest_version=current.version, current=current, restorable_versions=restorable
    )


def test_push_confirmed_only_by_the_id_and_digest_the_pusher_sent():
    reply = policy_pb2.PushWeightsResponse(weight_version=3, push_id="soak-0-2", digest=OURS)
    assert push_verdict(reply, "soak-0-2", OURS, _status(_record(3, "soak-0-2", OURS))) == "confirmed"
    # a SHA-256 push: the digest travels in the historic `sha256` field
    ours_sha = b"\x03" * 32
    sha_reply = policy_pb2.PushWeightsResponse(weight_version=3, push_id="soak-0-2", sha256=ours_sha)
    sha_record = policy_pb2.WeightVersionInfo(version=3, push_id="soak-0-2", sha256=ours_sha)
    assert push_verdict(sha_reply, "soak-0-2", ours_sha, _status(sha_record)) == "confirmed"
    # no digest at all proves nothing: an empty digest never confirms
    bare = policy_pb2.PushWeightsResponse(weight_version=3, push_id="soak-0-2")
    assert push_verdict(bare, "soak-0-2", b"", _status(_record(3, "soak-0-2"))) == "foreign"
    # the acknowledged version may already be a restorable one; the history still has to name us
    newer = _status(_record(4, "soak-0-3", OURS), _record(3, "soak-0-2", OURS))
    assert push_verdict(reply, "soak-0-2", OURS, newer) == "confirmed"
    # another writer's weights under our number: a foreign id, or our id with other weights
    assert push_verdict(reply, "soak-0-2", OURS, _status(_record(3, "trainer-7", THEIRS))) == "foreign"
    assert push_verdict(reply, "soak-0-2", OURS, _status(_record(3, "soak-0-2", THEIRS))) == "foreign"
    # the reply itself names another push or a digest other than the one we sent
    other = policy_pb2.PushWeightsResponse(weight_version=3, push_id="trainer-7", digest=OURS)
    assert push_verdict(other, "soak-0-2", OURS, _status(_record(3, "soak-0-2", OURS))) == "foreign"
    wrong_digest = policy_pb2.PushWeightsResponse(weight_version=3, push_id="soak-0-2", digest=THEIRS)
    assert push_verdict(wrong_digest, "soak-0-2", OURS, _status(_record(3, "soak-0-2", THEIRS))) == "foreign"
    # a restarted policy (history back at 0) or no answer: cannot tell
    assert push_verdict(reply, "soak-0-2", OURS, _status(_record(0))) == "unchecked"
    assert push_verdict(reply, "soak-0-2", OURS, None) == "unchecked"


def test_history_audit_counts_versions_that_are_not_our_pushes():
    sent = {"soak-0-0": OURS, "soak-0-1": THEIRS}
    status = _status(_record(2, "soak-0-1", THEIRS), _record(1, "soak-0-0", OURS), _record(0))
    assert audit_history(status, sent, {"soak-0-0": 1, "soak-0-1": 2}) == {
        "versions_checked": 2,
        "foreign": 0,
        "foreign_versions": [],
    }
    # applied but its reply was lost (no acknowledged number): still ours
    assert audit_history(status, sent, {"soak-0-0": 1})["foreign"] == 0
    # acknowledged as 1 but the history has it as 2; a version nobody here pushed; our id with other weights
    assert audit_history(status, sent, {"soak-0-0": 1, "soak-0-1": 1})["foreign_versions"] == [
        {"version": 2, "push_id": "soak-0-1"}
    ]
    assert audit_history(_status(_record(3, "trainer-7", OURS)), sent, {})["foreign"] == 1
    assert audit_history(_status(_record(1, "soak-0-0", THEIRS)), sent, {})["foreign"] == 1


def test_the_digest_checked_is_the_one_the_pusher_committed():
    soak = Soak(stack=None, weights={}, settings=SoakSettings())
    tensors = [("w", torch.arange(6, dtype=torch.float32).reshape(2, 3))]
    sent = list(soak._recording_digest("soak-0-0", push_requests(tensors, 8, push_id="soak-0-0")))
    assert sent[0].begin.push_id == "soak-0-0" and sent[-1].HasField("commit")
    assert soak.sent_digests == {"soak-0-0": bytes(sent[-1].commit.digest)}
    assert len(soak.sent_digests["soak-0-0"]) == 16  # XXH3-128, the default checksum


class _Policy(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, status: policy_pb2.GetStatusResponse) -> None:
        self.status = status

    def GetStatus(self, request, context):
        return self.status


def test_a_policy_history_is_audited_over_grpc_and_an_unreachable_one_is_recorded_before_a_restart():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(
        _Policy(_status(_record(2, "soak-0-1", THEIRS), _record(1, "trainer-7", OURS), _record(0))), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    soak = Soak(stack=SimpleNamespace(addresses={"policy": f"127.0.0.1:{port}"}), weights={}, settings=SoakSettings())
    soak.sent_digests.update({"soak-0-0": OURS, "soak-0-1": THEIRS})
    soak.acked_versions.update({"soak-0-0": 1, "soak-0-1": 2})
    try:
        assert soak._audit_history() == {
            "versions_checked": 2,
            "foreign": 1,
            "foreign_versions": [{"version": 1, "push_id": "trainer-7"}],
        }
    finally:
        server.stop(None).wait()
    # before a restart the soak goes on and says why nothing was checked; at the end a failure is an error
    assert soak._audit_history(final=False) == {
        "versions_checked": 0,
        "foreign": 0,
        "foreign_versions": [],
        "error": "UNAVAILABLE",
    }
    with pytest.raises(grpc.RpcError):
        soak._audit_history()
