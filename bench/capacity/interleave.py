"""The reward calibration's data, measured interleaved: the inputs and the figures they predict, round after round.

    flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.interleave --rounds 4

This VM's speed drifts by more than the model's error within minutes (the bare reward forward
measured 146, 79, 88 and 103 pairs/s in four `make bench-reward` runs within 75 minutes), so inputs
measured at one time and a benchmark run at another disagree by the drift, not by the model. Each
round therefore runs `bench.capacity.measure_reward` (the inputs: forward per batch size, per-request
service costs) and then `bench.reward_bench` (the throughput at 1-64 clients the model predicts)
back to back. The calibration (calibration.reward_levels) predicts every round's levels from that
round's own inputs and compares the medians over the rounds. Both programs run unchanged, each in its
own process, as their own commands run them.

Writes bench/results/capacity.interleaved.json: per round, both programs' whole result files.
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
OUT = RESULTS / "capacity.interleaved.json"
COMMAND = "flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.interleave"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="Rounds of (inputs, then the predicted benchmark).")
    parser.add_argument("--out", type=Path, default=OUT, help="Result file.")
    parser.add_argument(
        "--reward-args", default="", help="Extra flags for bench.reward_bench (e.g. '--requests 128'); default none."
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    started = time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="capacity-interleave-") as scratch:
        for index in range(args.rounds):
            log.info("round %d of %d", index + 1, args.rounds)
            rounds.append(measure_round(index, Path(scratch), args.reward_args.split()))
    result = {
        "benchmark": "capacity.interleaved",
        "command": COMMAND + (f" --rounds {args.rounds}" if args.rounds != 4 else ""),
        "what": "per round: bench.capacity.measure_reward's result (inputs), then bench.reward_bench's (predicted)",
        "machine": machine(),
        "rounds": rounds,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("-> %s (%d rounds, %.0f s)", args.out, args.rounds, result["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
