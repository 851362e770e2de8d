"""Exploration benchmark: what a rollout temperature schedule changes, against a constant temperature.

    python -m bench.exploration_bench [--steps 8] [--start 1.3] [--end 0.7]

Starts the policy (SmolLM2-135M-Instruct) and reward services, then trains the rules
task (about `rules_target_words` words that use the word "story") twice from the same
start weights with the same seed: the baseline samples at a constant temperature 1.0,
the candidate on a cosine schedule from `start` to `end`. Per arm it reports what the
exploration metrics saw during training (distinct-2 of each prompt's completions, the
share of groups whose rewards are all equal and so carry no GRPO signal, the sampling
temperature), the training reward, and the held-out reward and KL after training
(evaluated at temperature 1.0 with a fixed seed, so both arms are judged alike).
Writes bench/results/exploration.json.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import write_result
from bench.rl_runs import gain, paired_difference, rewards_toml, train_and_evaluate
from bench.stack import services
from services.common.config import load_config, option
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.sections import Endpoints, Lora, Optimizer, Push, Run, Sampling
from services.common.server import setup_logging
from services.trainer.config import Objective, Rewards, TrainerConfig
from services.trainer.exploration import ExplorationSettings

log = logging.getLogger("bench.exploration")


@dataclass(frozen=True)
class ExplorationBenchConfig:
    """Constant temperature vs a cosine temperature schedule on the rules task (SmolLM2-135M, LoRA)."""

    steps: int = option(8, "Training steps per arm.")
    start: float = option(1.3, "Candidate: the schedule's first temperature.")
    end: float = option(0.7, "Candidate: the schedule's last temperature.")
    baseline_temperature: float = option(1.0, "Baseline: the constant temperature.")
    prompts_per_step: int = option(4, "Prompts per step.")
    samples_per_prompt: int = option(4, "Samples per prompt.")
    max_tokens: int = option(48, "Tokens per sample.")
    learning_rate: float = option(1e-3, "LoRA learning rate.")
    lora_rank: int = option(16, "LoRA rank.")
    kl_coef: float = option(0.02, "KL coefficient to the start model.")
    rules_target_words: int = option(20, "Rules task: the length (in words) worth 1.")
    eval_samples_per_prompt: int = option(4, "Held-out samples per prompt (16 prompts).")
    heldout_file: str = option("data/book_reviews_heldout.jsonl", "Held-out prompts.")
    prompts_file: str = option("data/book_reviews.jsonl", "Training prompts.")
    work_dir: str = option("runs/bench-exploration", "Service logs and the runs.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where the packaged policy is converted to on first use.")
    seed: int = option(0, "Seed (the same for both arms).")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        if min(self.steps, self.prompts_per_step, self.max_tokens, self.eval_samples_per_prompt, self.lora_rank) < 1:
            raise ValueError("steps, prompts_per_step, max_tokens, eval_samples_per_prompt and lora_rank must be >= 1")
        if min(self.start, self.end, self.baseline_temperature) <= 0:
            raise ValueError(
                "start, end and baseline_temperature must be > 0 (the loss needs the sampling distribution)"
            )
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2: GRPO compares the samples of a prompt")


def run_arm(
    name: str,
    exploration: ExplorationSettings,
    temperature: float,
    config: ExplorationBenchConfig,
    model_dir: str,
    policy: str,
    reward: str,
    work: Path,
) -> dict:
    trainer = TrainerConfig(
        model=model_dir,
        prompts_file=config.prompts_file,
        steps=config.steps,
        sampling=Sampling(
            prompts_per_step=config.prompts_per_step,
            samples_per_prompt=config.samples_per_prompt,
            max_tokens=config.max_tokens,
            temperature=temperature,
        ),
        objective=Objective(algorithm="grpo", kl_coef=config.kl_coef),
        rewards=Rewards(model="rules"),
        optimizer=Optimizer(learning_rate=config.learning_rate, micro_batch_size=4),
        lora=Lora(rank=config.lora_rank, targets=("q_proj", "k_proj", "v_proj", "o_proj")),
        push=Push(scope="changed"),
        endpoints=Endpoints(policy=policy, reward=reward),
        run=Run(output_dir=str(work / name), seed=config.seed),
        exploration=exploration,
    )
    # both arms are judged at temperature 1.0 with one seed, whatever temperature they trained at
    run = train_and_evaluate(
        trainer,
        ("rules",),
        config.heldout_file,
        config.eval_samples_per_prompt,
        config.seed + 1234,
        f"bench exploration {name}",
        eval_temperature=1.0,
    )
    before, after, steps = run["before"], run["after"], run["steps"]
    held_out = gain(before, after, "rules")

    def mean(key: str) -> float:
        return round(sum(s[key] for s in steps) / len(steps), 4)

    return {
        "arm": name,
        "temperatures": [s["temperature"] for s in steps],
        "distinct_2_mean": mean("distinct_n"),
        "zero_signal_groups_mean": mean("zero_signal_groups"),
        "entropy_mean": mean("entropy"),
        "train_reward_mean": mean("reward_mean"),
        "train_reward_first_last": [steps[0]["reward_mean"], steps[-1]["reward_mean"]],
        "heldout_reward_before": held_out["before"],
        "heldout_reward_after": held_out["after"],
        "heldout_gain": held_out["gain"],
        "heldout_gain_ci95": held_out["gain_ci95"],
        "heldout_gain_z": held_out["z"],
        "heldout_n_prompts": held_out["n_prompts"],
        "heldout_kl_after": after["kl"],
        "heldout_gain_by_prompt": [
            b - a for a, b in zip(before["reward_by_prompt"]["rules"], after["reward_by_prompt"]["rules"], strict=True)
        ],
        "wall_s": run["wall_s"],
        "steps": len(steps),
    }


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(
        ExplorationBenchConfig, argv, env_prefix="RLHF_BENCH_EXPLORATION_", prog="python -m bench.exploration_bench"
    )
    setup_logging(config.log_level)
    work = Path(config.work_dir)
    model_dir = str(prepare_smollm2(Path(config.model_cache)))
    started = time.time()
    arms = {}
    toml = rewards_toml(("rules",), config.rules_target_words, "story")
    with services(model_dir, toml, work, label="bench exploration") as stack:
        policy, reward = stack.policy[0], stack.reward
        arms["baseline"] = run_arm(
            "baseline", ExplorationSettings(), config.baseline_temperature, config, model_dir, policy, reward, work
        )
        schedule = ExplorationSettings(temperature_schedule="cosine", temperature_end=config.end)
        arms["candidate"] = run_arm("candidate", schedule, config.start, config, model_dir, policy, reward, work)
    base, cand = arms["baseline"], arms["candidate"]
    result = {
        "compared": (
            f"rules task, {config.steps} GRPO steps each: constant temperature {config.baseline_temperature} "
            f"(baseline) vs cosine {config.start} -> {config.end} (candidate)"
        ),
        "baseline": base,
        "candidate": cand,
        "ratio": {
            "distinct_2": round(cand["distinct_2_mean"] / max(base["distinct_2_mean"], 1e-9), 3),
            "zero_signal_groups": round(
                cand["zero_signal_groups_mean"] / max(base["zero_signal_groups_mean"], 1e-9), 3
            ),
            "heldout_gain": round(cand["heldout_gain"] / base["heldout_gain"], 3) if base["heldout_gain"] else None,
        },
        "candidate_minus_baseline_heldout_gain": paired_difference(
            base["heldout_gain_by_prompt"], cand["heldout_gain_by_prompt"]
        ),
        "wall_s": round(time.time() - started, 1),
        "services_start_s": stack.started_s,
        "load_average_1min": os.getloadavg()[0],
        "config": asdict(config),
    }
    path = write_result("exploration", result)
    print(
        f"\n{'arm':<10} {'distinct-2':>10} {'zero-signal':>11} {'train r':>8} {'held-out gain':>13} {'z':>5} {'KL':>7}"
    )
    for arm in (base, cand):
        print(
            f"{arm['arm']:<10} {arm['distinct_2_mean']:>10.3f} {arm['zero_signal_groups_mean']:>11.3f} "
            f"{arm['train_reward_mean']:>8.3f} {arm['heldout_gain']:>+13.4f} {arm['heldout_gain_z']:>5.1f} "
            f"{arm['heldout_kl_after']:>7.4f}"
        )
    versus = result["candidate_minus_baseline_heldout_gain"]
    print(
        f"[bench] held-out gain, candidate - baseline: {versus['mean']:+.4f}, 95% CI "
        f"[{versus['ci95'][0]:+.3f}, {versus['ci95'][1]:+.3f}] (n = {versus['n']} held-out prompts)"
    )
    print(f"\n[bench] total {result['wall_s']:.0f} s; wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
