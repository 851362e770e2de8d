"""python -m bench.capacity: the capacity table, calibration and plot in one run.

    .venv/bin/python -m bench.capacity [--readme PATH] [--steps 20] [--seed 0]

Reads bench/capacity/inputs/*.toml and the committed result files, computes the scaling table
(analytic model + one seeded simulation per cell), checks calibration, writes
bench/results/capacity.json and capacity.png, prints both tables. Seconds, no GPU, no services.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from bench.capacity import calibration, inputs, report
from bench.capacity.model import CapacityModel
from bench.capacity.simulation import SimConfig, simulate

log = logging.getLogger(__name__)
COMMAND = ".venv/bin/python -m bench.capacity"


def sim_config(row: dict, data: inputs.Inputs, steps: int, seed: int) -> SimConfig:
    """The simulation of one table cell, from the same phase times as the analytic row."""
    return SimConfig(
        generate_s=row["generate"],
        train_s=row["train"],
        push_s=row["push"],
        pairs_per_batch=data.step.sequences,
        reward_pair_s=1 / row["reward_pairs_per_s_per_replica"],
        policy_replicas=row["policy_replicas"],
        reward_replicas=row["reward_replicas"] + row["reward_replicas_live"],
        live_requests_per_s=data.traffic.live_requests_per_s,
        canary_share=data.traffic.canary_share,
        max_staleness=data.step.max_staleness,
        steps=steps,
        seed=seed,
    )


def build(steps: int = 20, seed: int = 0, results: Path = calibration.RESULTS) -> dict:
    data = inputs.load()
    model = CapacityModel(data)
    table = model.table()
    for row in table:
        if row["fits"]:
            sim = simulate(sim_config(row, data, steps, seed))
            sim.pop("config")
            row["simulation"] = sim
    local = calibration.local_checks(results)
    published = calibration.published_checks(data)
    return {
        "benchmark": "capacity",
        "command": COMMAND,
        "compared": "capacity model predictions vs measurements here (step.json, reward.json) and published figures",
        "inputs": {
            "step": asdict(data.step),
            "reward": asdict(data.reward),
            "traffic": asdict(data.traffic),
            "push": asdict(data.push),
            "cluster": asdict(data.cluster),
            "efficiency": asdict(data.efficiency),
        },
        "simulation": {"steps": steps, "seed": seed, "jitter_cv": SimConfig.__dataclass_fields__["jitter_cv"].default},
        "input_sources": calibration.input_sources(data),
        "measured_here": asdict(calibration.local_rates(results)),
        "table": table,
        "calibration": {
            "local": [c.as_dict() for c in local],
            "published": [c.as_dict() for c in published],
            "local_reward_levels": calibration.reward_levels(results),
            "local_async": calibration.local_async(results),
            "band_reasons": calibration.band_reasons(),
            "local_summary": calibration.summary(local),
            "published_summary": calibration.summary(published),
            "fitted_per_tensor_s": calibration.fitted_per_tensor_s(data),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps simulated per table cell.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the simulations.")
    parser.add_argument("--out", type=Path, default=calibration.RESULTS, help="Where capacity.json/.png/.md go.")
    parser.add_argument("--readme", type=Path, default=None, help="Also write the README's Scaling section here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    result = build(args.steps, args.seed)
    result["wall_s"] = round(time.perf_counter() - started, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    report.plot(result, args.out / "capacity.png")
    section = report.markdown(result, COMMAND)
    (args.out / "capacity.md").write_text(section)
    if args.readme:
        args.readme.write_text(section)
    print("\n".join(report.table_lines(result)))
    print()
    print("\n".join(report.calibration_lines(result)))
    staleness = result["calibration"]["local_async"]
    print(
        f"\nasync staleness here: predicted {staleness['predicted_staleness']}, measured "
        f"{staleness['measured_staleness_samples']} (samples by versions behind)"
    )
    local, published = result["calibration"]["local_summary"], result["calibration"]["published_summary"]
    print(
        f"\nlocal: {local['in_band']}/{local['checks']} in band (not judged, machines differ: "
        f"{', '.join(local['not_comparable']) or 'none'}); published: {published['in_band']}/"
        f"{published['checks']} in band; {result['wall_s']} s -> {args.out / 'capacity.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
