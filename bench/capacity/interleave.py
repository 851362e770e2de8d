"""The calibration's data, measured interleaved: the inputs and the figures they predict, round after round.

    flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.interleave --rounds 4
    flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.interleave --kind step --rounds 3

This VM's speed drifts by more than the model's error within minutes (the bare reward forward
measured 146, 79, 88 and 103 pairs/s in four `make bench-reward` runs within 75 minutes), so inputs
measured at one time and a benchmark run at another disagree by the drift, not by the model. Each
round therefore runs `bench.capacity.measure_reward` (the inputs: forward per batch size, per-request
service costs) and then `bench.reward_bench` (the throughput at 1-64 clients the model predicts)
back to back. The calibration (calibration.reward_levels) predicts every round's levels from that
round's own inputs and compares the medians over the rounds. Both programs run unchanged, each in its
own process, as their own commands run them.

With `--kind step` a round runs the inputs of the step's score and push phases, `measure_reward
--step-call-only` (the step-shaped Score call beside a policy server, after a Generate) and the push
benchmark (`bench.push_bench --synthetic-params 0`: its same-host push), and then the sync step they
predict (`bench.step_bench --modes sync`); after the last round the inputs run once more, so every
step run lies between two measurements of its inputs (the next round's, or the closing ones) and is
predicted from both (calibration.step_rounds); the step checks compare the medians over the rounds.

Writes bench/results/capacity.interleaved.json (reward) or capacity.step-interleaved.json (step): per
round, every program's whole result file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import RESULTS, machine

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
OUT = {"reward": RESULTS / "capacity.interleaved.json", "step": RESULTS / "capacity.step-interleaved.json"}
COMMAND = "flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.interleave"
DEFAULT_ROUNDS = {"reward": 4, "step": 3}
WHAT = {
    "reward": "per round: bench.capacity.measure_reward's result (inputs), then bench.reward_bench's (predicted)",
    "step": "per round: bench.capacity.measure_reward --step-call-only's and bench.push_bench's results (inputs), "
    "then bench.step_bench --modes sync's (predicted); closing_inputs: the inputs once more after the last round, "
    "so that every step run has inputs measured right before and right after it",
}


def _run(module: str, out_flag: str, out: Path, extra: list[str]) -> dict:
    """Runs one measuring program in its own process (as its command does) and returns its result file."""
    command = [sys.executable, "-m", module, out_flag, str(out), *extra]
    log.info("$ %s", " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log.info("  %s: %.0f s", module, time.perf_counter() - started)
    return json.loads(out.read_text())


def measure_round(index: int, scratch: Path, reward_args: list[str]) -> dict:
    started = time.time()
    costs = _run("bench.capacity.measure_reward", "--out", scratch / f"costs-{index}.json", [])
    reward = _run("bench.reward_bench", "--output", scratch / f"reward-{index}.json", reward_args)
    return {"round": index, "started_unix": round(started), "costs": costs, "reward": reward}


def measure_step_inputs(index: int, scratch: Path, push_repeats: int) -> dict:
    """The step's score and push inputs: measure_reward's step call, then the push benchmark."""
    started = time.time()
    costs = _run("bench.capacity.measure_reward", "--out", scratch / f"costs-{index}.json", ["--step-call-only"])
    push = _run(
        "bench.push_bench",
        "--output",
        scratch / f"push-{index}.json",
        ["--synthetic-params", "0", "--repeats", str(push_repeats)],
    )
    return {"started_unix": round(started), "costs": costs, "push": push}


def measure_step_round(index: int, scratch: Path, push_repeats: int) -> dict:
    inputs = measure_step_inputs(index, scratch, push_repeats)
    step = _run("bench.step_bench", "--output", scratch / f"step-{index}.json", ["--modes", "sync"])
    return {"round": index, **inputs, "step": step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kind",
        choices=("reward", "step"),
        default="reward",
        help="reward: measure_reward then bench-reward; step: measure_reward and the push benchmark, then the sync step.",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="Rounds of (inputs, then the predicted benchmark); 4 reward, 3 step."
    )
    parser.add_argument("--out", type=Path, default=None, help="Result file (default by --kind, in bench/results).")
    parser.add_argument(
        "--reward-args", default="", help="Extra flags for bench.reward_bench (e.g. '--requests 128'); default none."
    )
    parser.add_argument("--push-repeats", type=int, default=3, help="Timed pushes per path in a step round.")
    args = parser.parse_args(argv)
    rounds_wanted = args.rounds if args.rounds is not None else DEFAULT_ROUNDS[args.kind]
    if rounds_wanted < 1:
        parser.error(f"--rounds must be >= 1, got {rounds_wanted}")
    out = args.out or OUT[args.kind]
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    started = time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="capacity-interleave-") as scratch:
        for index in range(rounds_wanted):
            log.info("round %d of %d", index + 1, rounds_wanted)
            if args.kind == "step":
                rounds.append(measure_step_round(index, Path(scratch), args.push_repeats))
            else:
                rounds.append(measure_round(index, Path(scratch), args.reward_args.split()))
        closing = None
        if args.kind == "step":  # the last round's step is bracketed by inputs too
            log.info("closing inputs")
            closing = measure_step_inputs(rounds_wanted, Path(scratch), args.push_repeats)
    command = COMMAND + (" --kind step" if args.kind == "step" else "")
    result = {
        "benchmark": "capacity.interleaved" if args.kind == "reward" else "capacity.step-interleaved",
        "command": command + (f" --rounds {rounds_wanted}" if rounds_wanted != DEFAULT_ROUNDS[args.kind] else ""),
        "what": WHAT[args.kind],
        "machine": machine(),
        "rounds": rounds,
        **({"closing_inputs": closing} if closing is not None else {}),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("-> %s (%d rounds, %.0f s)", out, rounds_wanted, result["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
