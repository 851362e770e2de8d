"""Soak: availability of the whole stack under periodic restarts, against the same traffic without them.

    python -m bench.soak_bench [--duration-s 240] [--restart-every-s 60] [--push-every-s 30]

Starts the policy (SmolLM2-135M by default, recording into an SQLite experience
store), the reward service (rules) and the FeedbackService on loopback and drives
mixed Generate / Score / PushWeights / SubmitFeedback traffic (services/loadtest/soak.py).
Baseline: `--duration-s` with no restarts. Candidate: the same again while one service
after another is restarted (SIGTERM drain, then SIGKILL crash, alternating).
Ratio: the candidate's share of succeeded requests over the baseline's. Acknowledged
feedback lost must be 0 in both. Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from bench.machine import write_result
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.loadtest.soak import RULES_TOML, Soak, SoakSettings, SoakStack



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
    return report["succeeded"] / max(1, report["sent"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=240.0, help="Length of each phase (seconds).")
    parser.add_argument("--restart-every-s", type=float, default=60.0, help="Candidate phase: a restart this often.")
    parser.add_argument("--push-every-s", type=float, default=30.0, help="A full-weight push this often.")
    parser.add_argument("--model", type=Path, default=None, help="Policy checkpoint (default: SmolLM2-135M-Instruct).")
    args = parser.parse_args()
    model = args.model or prepare_smollm2(DEFAULT_CACHE)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        print(f"baseline: {args.duration_s:.0f} s of mixed traffic, no restarts", flush=True)
        base, base_codes = phase(Path(tmp) / "baseline", model, SoakSettings(args.duration_s, 0.0, args.push_every_s))
        print(f"candidate: {args.duration_s:.0f} s with a restart every {args.restart_every_s:.0f} s", flush=True)
        cand, cand_codes = phase(Path(tmp) / "restarts", model,
                                 SoakSettings(args.duration_s, args.restart_every_s, args.push_every_s))
    result = {
        "compared": "share of requests that succeeded: with periodic service restarts (candidate) vs none (baseline)",
        "model": str(model),
        "baseline": {"success_share": round(success_share(base), 4), **base},
        "candidate": {"success_share": round(success_share(cand), 4), **cand},
        "ratio": round(success_share(cand) / max(success_share(base), 1e-9), 4),
        "lost_acknowledged_feedback": base["lost"]["feedback"] + cand["lost"]["feedback"],
        "service_exit_codes": {"baseline": base_codes, "candidate": cand_codes},
    }
    path = write_result("soak", result)
    for name, report in (("baseline", base), ("candidate", cand)):
        print(f"{name}: sent {report['sent']}, succeeded {report['succeeded']} ({success_share(report):.1%}), "
              f"restarts {len(report['restarts'])}, lost feedback {report['lost']['feedback']}")
        for rpc, tally in report["rpcs"].items():
            print(f"  {rpc:15s} sent {tally['sent']:6d} ok {tally['succeeded']:6d} failed {tally['failed']}")
    print(f"ratio {result['ratio']:.3f}; wrote {path}")
    if result["lost_acknowledged_feedback"]:
        raise SystemExit("acknowledged feedback was lost")


if __name__ == "__main__":
    main()
