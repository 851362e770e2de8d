"""Short soak: mixed traffic while every service is restarted (drained or crashed); nothing acknowledged is lost."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from services.loadtest.soak import RESTART_SCHEDULE, RPC_SERVICE, RULES_TOML, Soak, SoakSettings, SoakStack

pytestmark = pytest.mark.integration


def test_mixed_traffic_with_restarts_loses_no_acknowledged_write(tiny_policy_dir, tmp_path):
    stack = SoakStack(
        tmp_path / "soak",
        str(tiny_policy_dir),
        RULES_TOML,
        "length",
        ("--max-model-len", "512", "--cpu-kvcache-gib", "1"),
    )
    weights = load_file(str(tiny_policy_dir / "model.safetensors"))
    try:
        stack.start()
        # the whole schedule: every service SIGKILLed once and SIGTERMed once
        report = Soak(stack, weights, SoakSettings(duration_s=20, restart_every_s=3, push_every_s=4), print).run()
    finally:
        codes = stack.stop()
    print(json.dumps(report, indent=1))
    assert [(r["service"], r["kind"]) for r in report["restarts"]] == list(RESTART_SCHEDULE)
    assert report["every_service_sigkilled_and_sigtermed"]
    assert report["restarts_by_service"] == {
        name: {"sigkill": 1, "sigterm": 1} for name in ("reward", "feedback", "policy")
    }
    for rpc, tally in report["rpcs"].items():
        assert tally["succeeded"] > 0, f"{rpc} never succeeded: {tally}"
        assert tally["sent"] == tally["succeeded"] + sum(tally["failed"].values())
        assert tally["success_share"] == round(tally["succeeded"] / tally["sent"], 4)
        # a restart shows as UNAVAILABLE (or a drained request's CANCELLED/ABORTED), never as a server bug
        assert not {"INTERNAL", "UNKNOWN", "DATA_LOSS"} & set(tally["failed"]), f"{rpc}: {tally['failed']}"
    assert report["worst_rpc_success_share"] == min(t["success_share"] for t in report["rpcs"].values())
    for service, availability in report["availability"].items():
        assert not availability["down_at_end"], service
        failures = sum(
            sum(report["rpcs"][rpc]["failed"].values()) for rpc, owner in RPC_SERVICE.items() if owner == service
        )
        if failures:
            assert availability["outages"] >= 1 and availability["longest_unavailable_s"] > 0, (service, availability)
            assert availability["unavailable_total_s"] >= availability["longest_unavailable_s"], availability
            assert 0 < availability["available_share"] < 1, (service, availability)
    assert report["acknowledged_writes"]["feedback"] > 0
    assert report["lost"]["feedback"] == 0, report["lost_ids"]
    assert report["pushes_under_foreign_identity"] == 0, report["push_identity"]
    assert report["push_identity"]["confirmed"] > 0, report["push_identity"]
    # the histories GetStatus reports (before each policy restart, at the end) hold only our pushes and digests
    audits = [*report["history_audits_before_policy_restarts"], report["final_history_audit"]]
    assert len(audits) == 3 and all("error" not in a for a in audits), audits
    assert report["history_versions_checked"] == sum(a["versions_checked"] for a in audits) > 0, audits
    assert all(a["foreign"] == 0 for a in audits), audits
    assert report["pushed_versions_increasing_between_restarts"]
    assert report["serving_after"] == {"policy": True, "reward": True, "feedback": True}
    assert all(code == 0 for code in codes.values()), codes
