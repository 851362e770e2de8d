"""End-to-end training step: time split (generate / score / train / push / wait) in sync vs async mode.

    python -m bench.step_bench [--steps 5] [--reward-model similarity]

Both modes train SmolLM2-135M-Instruct (GRPO) against the same policy and reward
services, one run after the other. Sync: each step generates and scores, then trains
and pushes. Async: batch N+1 is generated and scored on a background thread while
batch N trains, so a step costs wait + train + push. The first step of each run
(warm-up) is left out of the means. Ratio: sync step seconds over async step
seconds (the speed-up); `hidden_generation_share` is how much of the async run's
generate + score time did not show up as waiting. On a CPU box both modes share the same
cores, so overlapping slows each phase down; `projection_separate_devices` gives the
async step time when generation runs on its own device (policy GPU), from the sync
run's phases. Writes bench/results/step.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

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


def run(mode: str, policy: str, reward: str, model_dir: str, out: Path, steps: int, reward_model: str) -> dict:
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
    trainer = Trainer(config)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="Steps per mode (the first is warm-up).")
    parser.add_argument("--reward-model", default="similarity", choices=("similarity", "rules"))
    args = parser.parse_args()
    model_dir = str(prepare_smollm2(DEFAULT_CACHE))
    with (
        tempfile.TemporaryDirectory(prefix="step-bench-") as tmp,
        services(model_dir, REWARDS, RESULTS / "logs" / "step", label="step") as stack,
    ):
        sync = run("sync", stack.policy[0], stack.reward, model_dir, Path(tmp), args.steps, args.reward_model)
        asynchronous = run("async", stack.policy[0], stack.reward, model_dir, Path(tmp), args.steps, args.reward_model)
    result = {
        "compared": "seconds per training step, sync (baseline) vs async rollouts (candidate), SmolLM2-135M GRPO",
        "model": "SmolLM2-135M-Instruct",
        "baseline": sync,
        "candidate": asynchronous,
        "ratio": round(sync["step_s"] / asynchronous["step_s"], 3),
        "ratio_meaning": "sync s/step over async s/step (> 1: async is faster)",
        "projection_separate_devices": projection(sync),
        "service_exit_codes": stack.exit_codes,
    }
    path = write_result("step", result)
    print(
        f"[step] sync/async = {result['ratio']}, hidden generation share {asynchronous.get('hidden_generation_share')} -> {path}"
    )


if __name__ == "__main__":
    main()
