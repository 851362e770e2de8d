"""Short soak: mixed traffic while every service is restarted (drained or crashed); nothing acknowledged is lost."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from services.loadtest.soak import RULES_TOML, Soak, SoakSettings, SoakStack

pytestmark = pytest.mark.integration



def test_mixed_traffic_with_restarts_loses_no_acknowledged_write(tiny_policy_dir, tmp_path):
    stack = SoakStack(tmp_path / "soak", str(tiny_policy_dir), RULES_TOML, "length", ("--max-model-len", "512", "--cpu-kvcache-gib", "1"))
    weights = load_file(str(tiny_policy_dir / "model.safetensors"))
    try:
        stack.start()
        # one restart of each service: reward drained, feedback store crashed, policy drained
        report = Soak(stack, weights, SoakSettings(duration_s=50, restart_every_s=12, push_every_s=4), print).run()
    finally:
        codes = stack.stop()
    print(json.dumps(report, indent=1))
    assert [r["service"] for r in report["restarts"]][:3] == ["reward", "feedback", "policy"]
    assert [r["kind"] for r in report["restarts"]][:2] == ["sigterm", "sigkill"]
    for rpc, tally in report["rpcs"].items():
        assert tally["succeeded"] > 0, f"{rpc} never succeeded: {tally}"
        assert tally["sent"] == tally["succeeded"] + sum(tally["failed"].values())
        # a restart shows as UNAVAILABLE (or a drained request's CANCELLED/ABORTED), never as a server bug
        assert not {"INTERNAL", "UNKNOWN", "DATA_LOSS"} & set(tally["failed"]), f"{rpc}: {tally['failed']}"
    assert report["acknowledged_writes"]["feedback"] > 0
    assert report["lost"]["feedback"] == 0, report["lost_ids"]
    assert report["pushed_versions_increasing_between_restarts"]
    assert report["serving_after"] == {"policy": True, "reward": True, "feedback": True}
    assert all(code == 0 for code in codes.values()), codes
