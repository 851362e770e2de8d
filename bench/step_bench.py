"""End-to-end training step: time split (generate / score / train / push / wait), sync vs async vs colocated.

    python -m bench.step_bench [--steps 5] [--reward-model similarity] [--modes sync,async,colocated]

The service modes train SmolLM2-135M-Instruct (GRPO) against the same policy and reward
services, one run after the other. Sync: each step generates and scores, then trains
and pushes. Async: batch N+1 is generated and scored on a background thread while
batch N trains, so a step costs wait + train + push. The first step of each run
(warm-up) is left out of the means. Ratio: sync step seconds over async step
seconds (the speed-up); `hidden_generation_share` is how much of the async run's
generate + score time did not show up as waiting. On a CPU box both modes share the same
cores, so overlapping slows each phase down; `projection_separate_devices` gives the
async step time when generation runs on its own device (policy GPU), from the sync
run's phases.

Colocated (the baseline for the architecture, run after the services have stopped so
it never shares the cores with them): the same Trainer, config, workload and seed in
sync mode, with the vLLM engine and the reward models in the trainer's process and no
gRPC (bench/colocated.py): generation on the same engine adapter, a push written once
into a /dev/shm safetensors file and reloaded in place, scoring through the reward
servicer called directly. `services_vs_colocated.ratio` = sync s/step over colocated
s/step: what running as services costs (target <= 1.10).

Writes bench/results/step.json; a run of fewer modes (--modes) writes
bench/results/step-<modes>.json instead, e.g. step-colocated.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.colocated import colocated
from bench.machine import RESULTS, write_result
from bench.stack import services
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.sections import Endpoints, Run
from services.trainer.config import Rewards, TrainerConfig
from services.trainer.loop import Trainer

REWARDS = """\
[[models]]
name = "similarity"
kind = "similarity"

[[models]]
name = "rules"
kind = "rules"
target_words = 30
required_words = ["book"]
"""
PHASES = ("generate", "score", "wait", "train", "push")
MODES = ("sync", "async", "colocated")
SERVICES_TARGET = 1.10  # issue 15: the services' step time within 10% of the colocated baseline's


def run(
    mode: str, policy: str, reward: str, model_dir: str, out: Path, steps: int, reward_model: str, clients=(None, None)
) -> dict:
    """One training run of `steps` steps; `clients`: (policy, reward) stand-ins in place of gRPC clients."""
    config = TrainerConfig(
        model=model_dir,
        steps=steps,
        async_rollouts=mode == "async",
        max_staleness=1,
        checkpoint_every=0,
        rewards=Rewards(model=reward_model),
        endpoints=Endpoints(policy=policy, reward=reward),
        run=Run(output_dir=str(out / mode), seed=0),
    )
    trainer = Trainer(config, *clients)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    records = summary["steps"][1:]  # the first step warms caches up
    mean = {p: round(statistics.fmean(r["seconds"].get(p, 0.0) for r in records), 2) for p in PHASES}
    step_s = statistics.fmean(
        sum(
            v
            for k, v in r["seconds"].items()
            if k in (("wait", "train", "push") if mode == "async" else ("generate", "score", "train", "push"))
        )
        for r in records
    )
    result = {
        "mode": mode,
        "step_s": round(step_s, 2),
        "seconds": mean,
        "steps_measured": len(records),
        "staleness": [r["staleness"] for r in summary["steps"]],
        "dropped_batches": sum(r["dropped_batches"] for r in summary["steps"]),
        "push_share": round(mean["push"] / step_s, 3) if step_s else None,  # of the step (target < 0.05)
    }
    if mode == "async":
        produced = mean["generate"] + mean["score"]
        result["hidden_generation_share"] = round(1 - mean["wait"] / produced, 3) if produced else None
    print(f"[step] {mode}: {result['step_s']} s/step  {mean}", flush=True)
    return result


def projection(sync: dict) -> dict:
    """Async step time when generation and training do not share compute (policy on its own GPU):
    max(train + push, generate + score), from the sync run's phases."""
    t = sync["seconds"]
    overlapped = max(t["train"] + t["push"], t["generate"] + t["score"])
    return {
        "formula": "max(train + push, generate + score) of the sync phases",
        "step_s": round(overlapped, 2),
        "ratio": round(sync["step_s"] / overlapped, 3),
    }


def parse_modes(text: str) -> tuple[str, ...]:
    """A comma-separated subset of MODES, in MODES order (the services' runs first, colocated after they stop)."""
    chosen = {mode.strip() for mode in text.split(",") if mode.strip()}
    if not chosen or chosen - set(MODES):
        raise argparse.ArgumentTypeError(f"--modes takes a comma-separated subset of {','.join(MODES)}, got {text!r}")
    return tuple(mode for mode in MODES if mode in chosen)


def summarize(runs: dict[str, dict]) -> dict:
    """The result's comparisons for the modes that ran: sync vs async, services (sync) vs colocated."""
    result: dict = {"model": "SmolLM2-135M-Instruct", "modes": list(runs)}
    sync, asynchronous = runs.get("sync"), runs.get("async")
    if sync and asynchronous:
        result |= {
            "compared": "seconds per training step, sync (baseline) vs async rollouts (candidate), SmolLM2-135M GRPO",
            "baseline": sync,
            "candidate": asynchronous,
            "ratio": round(sync["step_s"] / asynchronous["step_s"], 3),
            "ratio_meaning": "sync s/step over async s/step (> 1: async is faster)",
            "projection_separate_devices": projection(sync),
        }
    else:  # no sync/async pair: the runs under their own names (bench.summary skips such a file)
        result |= {mode: runs[mode] for mode in ("sync", "async") if mode in runs}
    if "colocated" in runs:
        result["colocated"] = runs["colocated"]
        if sync:
            ratio = round(sync["step_s"] / runs["colocated"]["step_s"], 3)
            result["services_vs_colocated"] = {
                "ratio": ratio,
                "meaning": "services sync s/step over colocated s/step (same trainer, engine and reward models in "
                "one process, no gRPC): what running as services costs per step",
                "target": SERVICES_TARGET,
                "met": ratio <= SERVICES_TARGET,
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="Steps per mode (the first is warm-up).")
    parser.add_argument("--reward-model", default="similarity", choices=("similarity", "rules"))
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=MODES,
        help="Comma-separated modes to run, of sync,async,colocated (default: all three, written to "
        "bench/results/step.json). Fewer modes write bench/results/step-<modes>.json (e.g. step-colocated.json), "
        "so a partial run never replaces the full result.",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="Result file instead of bench/results/step[-<modes>].json."
    )
    args = parser.parse_args()
    model_dir = str(prepare_smollm2(DEFAULT_CACHE))
    runs: dict[str, dict] = {}
    exit_codes = None
    with tempfile.TemporaryDirectory(prefix="step-bench-") as tmp:
        served = [mode for mode in args.modes if mode != "colocated"]
        if served:
            with services(model_dir, REWARDS, RESULTS / "logs" / "step", label="step") as stack:
                for mode in served:
                    runs[mode] = run(
                        mode, stack.policy[0], stack.reward, model_dir, Path(tmp), args.steps, args.reward_model
                    )
            exit_codes = stack.exit_codes
        if "colocated" in args.modes:  # after the services stopped: the cores are its alone
            with colocated(model_dir, REWARDS) as clients:
                here = "in-process"
                runs["colocated"] = run(
                    "colocated", here, here, model_dir, Path(tmp), args.steps, args.reward_model, clients
                )
    result = summarize(runs)
    if exit_codes is not None:
        result["service_exit_codes"] = exit_codes
    path = write_result("step" if args.modes == MODES else "-".join(("step", *args.modes)), result, args.output)
    if "ratio" in result:
        hidden = result["candidate"].get("hidden_generation_share")
        print(f"[step] sync/async = {result['ratio']}, hidden generation share {hidden}", flush=True)
    if "services_vs_colocated" in result:
        print(f"[step] services/colocated = {result['services_vs_colocated']['ratio']} (target <= 1.10)", flush=True)
    print(f"[step] -> {path}", flush=True)


if __name__ == "__main__":
    main()
