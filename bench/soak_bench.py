"""Soak: availability of the whole stack under periodic restarts, against the same traffic without them.

    python -m bench.soak_bench [--duration-s 240] [--restart-every-s 30] [--push-every-s 30]

Starts the policy (SmolLM2-135M by default, recording into an SQLite experience
store), the reward service (rules) and the FeedbackService on loopback and drives
mixed Generate / Score / PushWeights / SubmitFeedback traffic (services/loadtest/soak.py).
Baseline: `--duration-s` with no restarts. Candidate: the same traffic while every
service (policy, reward, feedback store) is SIGKILLed once and SIGTERMed once
(services/loadtest/soak.py RESTART_SCHEDULE, one restart every `--restart-every-s`;
the phase runs until `--restart-every-s` after the last restart). Reported per RPC: success share; per
service: the longest time its clients got no successful reply. Headline and ratio
use the worst RPC (cheap Score calls must not hide failed Generate calls): the
candidate's worst per-RPC success share over the baseline's share for that RPC.
Acknowledged feedback lost and pushes applied under a foreign identity (the
policy's version history from GetStatus against the push ids and digests the
pusher sent) must be 0 in both. Writes bench/results/soak.json, with the 1-minute
load average sampled every 10 s of each phase.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from bench.machine import write_result
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.loadtest.soak import RULES_TOML, Soak, SoakSettings, SoakStack

SERVER_BUG_CODES = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}


def phase(root: Path, model: Path, settings: SoakSettings) -> tuple[dict, dict]:
    stack = SoakStack(root, str(model), RULES_TOML, "length", ("--max-model-len", "1024"))
    weights: dict = {}
    for file in sorted(model.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    try:
        stack.start()
        report = Soak(stack, weights, settings, lambda line: print(f"  {line}", flush=True)).run()
    finally:
        codes = stack.stop()
    return report, codes


def success_share(report: dict) -> float:
    """The worst RPC's share of succeeded requests (the overall share is dominated by the most frequent RPC)."""
    return report["worst_rpc_success_share"] if report["worst_rpc_success_share"] is not None else 0.0


def overall_share(report: dict) -> float:
    return report["succeeded"] / max(1, report["sent"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=240.0, help="Length of each phase (seconds).")
    parser.add_argument(
        "--restart-every-s",
        type=float,
        default=30.0,
        help="Candidate phase: seconds of traffic between restarts (6 restarts: each service SIGKILLed "
        "and SIGTERMed once; the phase lasts until this long after the last).",
    )
    parser.add_argument("--push-every-s", type=float, default=30.0, help="A full-weight push this often.")
    parser.add_argument("--model", type=Path, default=None, help="Policy checkpoint (default: SmolLM2-135M-Instruct).")
    parser.add_argument(
        "--result-name", default="soak", help="Writes bench/results/<name>.json (a trial run: another name)."
    )
    args = parser.parse_args(argv)
    model = args.model or prepare_smollm2(DEFAULT_CACHE)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        print(f"baseline: {args.duration_s:.0f} s of mixed traffic, no restarts", flush=True)
        base, base_codes = phase(Path(tmp) / "baseline", model, SoakSettings(args.duration_s, 0.0, args.push_every_s))
        print(f"candidate: {args.duration_s:.0f} s with a restart every {args.restart_every_s:.0f} s", flush=True)
        cand, cand_codes = phase(
            Path(tmp) / "restarts", model, SoakSettings(args.duration_s, args.restart_every_s, args.push_every_s)
        )
    worst = cand["worst_rpc"]
    base_share_of_worst = base["rpcs"][worst]["success_share"] if worst else None
    result = {
        "compared": "success share of the worst RPC with every service SIGKILLed and SIGTERMed (candidate) vs no "
        "restarts (baseline, same RPC)",
        "model": str(model),
        "baseline": {
            "success_share": base_share_of_worst,
            "overall_success_share": round(overall_share(base), 4),
            **base,
        },
        "candidate": {
            "success_share": round(success_share(cand), 4),
            "overall_success_share": round(overall_share(cand), 4),
            **cand,
        },
        "ratio": round(success_share(cand) / max(base_share_of_worst or 0.0, 1e-9), 4),
        "ratio_meaning": f"worst RPC ({worst}) success share with restarts over its share without",
        "success_share_by_rpc": {
            rpc: {"baseline": base["rpcs"][rpc]["success_share"], "candidate": cand["rpcs"][rpc]["success_share"]}
            for rpc in cand["rpcs"]
        },
        "longest_unavailable_s": {name: a["longest_unavailable_s"] for name, a in cand["availability"].items()},
        "available_share": {name: a["available_share"] for name, a in cand["availability"].items()},
        "restart_schedule": [f"{r['kind']} {r['service']}" for r in cand["restarts"]],
        "every_service_sigkilled_and_sigtermed": cand["every_service_sigkilled_and_sigtermed"],
        "lost_acknowledged_feedback": base["lost"]["feedback"] + cand["lost"]["feedback"],
        "pushes_under_foreign_identity": base["pushes_under_foreign_identity"] + cand["pushes_under_foreign_identity"],
        "push_identity_checks": {
            label: {
                **report["push_identity"],
                "history_versions_checked": report["history_versions_checked"],
                "history_audits_before_policy_restarts": report["history_audits_before_policy_restarts"],
                "final_history_audit": report["final_history_audit"],
            }
            for label, report in (("baseline", base), ("candidate", cand))
        },
        "load_average_1min": {"baseline": base["load_average_1min"], "candidate": cand["load_average_1min"]},
        "service_exit_codes": {"baseline": base_codes, "candidate": cand_codes},
        # a restart may show as UNAVAILABLE (or a drained call's CANCELLED/ABORTED), never as a server bug
        "server_errors": {
            f"{label} {rpc}": {code: n for code, n in tally["failed"].items() if code in SERVER_BUG_CODES}
            for label, report in (("baseline", base), ("candidate", cand))
            for rpc, tally in report["rpcs"].items()
            if SERVER_BUG_CODES & set(tally["failed"])
        },
    }
    path = write_result(args.result_name, result)
    for name, report in (("baseline", base), ("candidate", cand)):
        print(
            f"{name}: sent {report['sent']}, overall {overall_share(report):.1%} succeeded, restarts "
            f"{report['restarts_by_service']}, lost feedback {report['lost']['feedback']}, pushes under a foreign "
            f"identity {report['pushes_under_foreign_identity']} (identity checks {report['push_identity']})"
        )
        for rpc, tally in report["rpcs"].items():
            share = f"{tally['success_share']:.1%}" if tally["success_share"] is not None else "-"
            print(f"  {rpc:15s} sent {tally['sent']:6d} ok {tally['succeeded']:6d} ({share}) failed {tally['failed']}")
        for service, availability in report["availability"].items():
            print(
                f"  {service:9s} longest unavailable {availability['longest_unavailable_s']:.1f} s "
                f"({availability['outages']} outages, available {availability['available_share']:.1%} of the time)"
            )
    print(f"worst RPC {worst}: ratio {result['ratio']:.3f}; wrote {path}")
    if result["lost_acknowledged_feedback"]:
        raise SystemExit("acknowledged feedback was lost")
    if result["pushes_under_foreign_identity"]:
        raise SystemExit("a push was applied under a foreign identity")
    if not result["every_service_sigkilled_and_sigtermed"]:
        raise SystemExit("the restart schedule did not complete")
    if result["server_errors"]:
        raise SystemExit(f"servers answered with a bug's status code: {result['server_errors']}")


if __name__ == "__main__":
    main()
