"""The soak's books: restart schedule, per-RPC success, longest unavailability (issue 16, defect 8)."""

from __future__ import annotations

import itertools

from services.loadtest.soak import RESTART_SCHEDULE, RPC_SERVICE, SERVICES, Availability, Tally


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
    assert a.as_dict(now=30.0) == {"longest_unavailable_s": 7.5, "outages": 2, "down_at_end": False}
    a.failed(25.0, run_started=0.0)
    assert a.as_dict(now=40.0) == {"longest_unavailable_s": 20.0, "outages": 3, "down_at_end": True}


def test_failures_before_any_success_count_from_the_start():
    a = Availability()
    a.failed(3.0, run_started=1.0)
    a.succeeded(9.0)
    assert a.as_dict(now=9.0)["longest_unavailable_s"] == 8.0
