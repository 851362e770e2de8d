"""Learning benchmark: does RL against the reward service raise the held-out reward?

    python -m bench.learning_bench [--similarity-steps 20] [--rules-steps 10] [--algorithm grpo] ...
    (make bench-learning)

Starts the policy (SmolLM2-135M-Instruct) and reward services, then for each task
(the seed's "similarity" reward against the reference reviews, and a rules reward:
about `rules_target_words` words that use the word `rules_required_word`):
resets the policy to the start weights, evaluates the held-out prompts
(data/book_reviews_heldout.jsonl, never trained on) with a fixed sampling seed,
trains, and evaluates again with the same seed. Writes bench/results/learning.json
(top level: the similarity task; `tasks` holds both) and the training curves
bench/results/learning.png (similarity) and learning-rules.png.

"Clearly above" is reported, not assumed: `z` is the held-out gain divided by its
standard error clustered by prompt (the samples of one prompt are not independent):
per held-out prompt, mean reward after minus before; z = mean / (sd / sqrt(prompts)).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import RESULTS, write_result
from services.common.config import build, load_config, option
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.common.sections import Endpoints, Lora, Optimizer, Push, Run, Sampling
from services.common.server import setup_logging
from services.trainer.config import Objective, Rewards, TrainerConfig
from services.trainer.curves import plot_run
from services.trainer.evaluate import EvaluateConfig, Evaluator
from services.trainer.loop import Trainer

log = logging.getLogger("bench.learning")

TASK_REWARD = {"similarity": "similarity", "rules": "rules"}


@dataclass(frozen=True)
class LearningBenchConfig:
    """Train SmolLM2-135M against the reward service on two tasks and measure the held-out reward."""

    tasks: tuple[str, ...] = option(("similarity", "rules"), "Tasks, in order: similarity and/or rules.")
    similarity_steps: int = option(16, "Training steps of the similarity task.")
    rules_steps: int = option(8, "Training steps of the rules task.")
    algorithm: str = option("grpo", "grpo, rloo, reinforce_pp or ppo.")
    prompts_per_step: int = option(4, "Prompts per step.")
    samples_per_prompt: int = option(4, "Samples per prompt.")
    max_tokens: int = option(48, "Tokens per sample (training and evaluation).")
    micro_batch_size: int = option(4, "Samples per forward/backward pass (bounds the trainer's memory).")
    learning_rate: float = option(1e-3, "Learning rate (of the LoRA adapters when lora_rank > 0).")
    lora_rank: int = option(16, "LoRA rank (0: full fine-tuning, pushing every tensor).")
    lora_targets: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"), "Modules LoRA adapts.")
    kl_coef: float = option(0.02, "KL coefficient to the start model.")
    rules_target_words: int = option(20, "Rules task: the length (in words) worth 1.")
    rules_required_word: str = option("story", "Rules task: a word worth +1 when present.")
    eval_samples_per_prompt: int = option(4, "Held-out samples per prompt (16 prompts).")
    heldout_file: str = option("data/book_reviews_heldout.jsonl", "Held-out prompts with reference reviews.")
    prompts_file: str = option("data/book_reviews.jsonl", "Training prompts.")
    work_dir: str = option("runs/bench-learning", "Service logs and the runs (metrics, checkpoints).")
    model_cache: str = option(str(DEFAULT_CACHE), "Where the packaged policy is converted to on first use.")
    cpu_kvcache_gib: float = option(1.0, "Policy KV cache (GiB); small, the box has other work.")
    start_timeout_s: float = option(900.0, "How long the services may take to report SERVING.")
    seed: int = option(0, "Seed.")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - {"similarity", "rules"}
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be similarity and/or rules, got {list(self.tasks)}")
        if min(self.similarity_steps, self.rules_steps, self.lora_rank) < 0:
            raise ValueError("similarity_steps, rules_steps and lora_rank must be >= 0")
        if min(self.prompts_per_step, self.micro_batch_size, self.max_tokens, self.eval_samples_per_prompt) < 1:
            raise ValueError("prompts_per_step, micro_batch_size, max_tokens and eval_samples_per_prompt must be >= 1")
        if self.samples_per_prompt < 2 or self.learning_rate <= 0 or self.kl_coef < 0:
            raise ValueError("samples_per_prompt must be >= 2, learning_rate > 0 and kl_coef >= 0")


def rewards_toml(config: LearningBenchConfig) -> str:
    return f"""\
[[models]]
name = "similarity"
kind = "similarity"

[[models]]
name = "rules"
kind = "rules"
target_words = {config.rules_target_words}
required_words = ["{config.rules_required_word}"]
"""


def z_score(before: dict, after: dict, model: str) -> float:
    """Held-out gain over its standard error, clustered by prompt.

    The samples of one prompt share it and are not independent, so the unit is the prompt:
    each held-out prompt's mean reward after minus before (the same prompts both times, a
    paired design), and z = mean difference / (sd of the differences / sqrt(prompts)).
    """
    pairs = list(zip(before["reward_by_prompt"][model], after["reward_by_prompt"][model], strict=True))
    if len(pairs) < 2:
        raise ValueError("a clustered z needs at least 2 held-out prompts")
    diffs = [b - a for a, b in pairs]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean / max(sd / math.sqrt(len(diffs)), 1e-12)


def run_task(task: str, config: LearningBenchConfig, model_dir: str, policy: str, reward: str, work: Path) -> dict:
    steps = config.similarity_steps if task == "similarity" else config.rules_steps
    reward_model = TASK_REWARD[task]
    run_dir = work / task
    for stale in ("metrics.jsonl", "summary.json"):
        (run_dir / stale).unlink(missing_ok=True)
    trainer = Trainer(
        TrainerConfig(
            model=model_dir,
            prompts_file=config.prompts_file,
            steps=steps,
            sampling=Sampling(
                prompts_per_step=config.prompts_per_step,
                samples_per_prompt=config.samples_per_prompt,
                max_tokens=config.max_tokens,
            ),
            objective=Objective(
                algorithm=config.algorithm, kl_coef=config.kl_coef, critic_learning_rate=config.learning_rate
            ),
            rewards=Rewards(model=reward_model),
            optimizer=Optimizer(learning_rate=config.learning_rate, micro_batch_size=config.micro_batch_size),
            lora=Lora(rank=config.lora_rank, targets=config.lora_targets),
            push=Push(scope="changed" if config.lora_rank else "full"),
            endpoints=Endpoints(policy=policy, reward=reward),
            run=Run(output_dir=str(run_dir), seed=config.seed),
        )
    )
    evaluator = Evaluator(
        build(
            EvaluateConfig,
            {
                "reward_models": tuple(TASK_REWARD.values()),
                "prompts_file": config.heldout_file,
                "sampling.samples_per_prompt": config.eval_samples_per_prompt,
                "sampling.max_tokens": config.max_tokens,
                "seed": config.seed + 1234,
            },
        ),
        trainer.policy_client,
        trainer.reward_client,
        trainer.learner.reference_logprobs,
        trainer.pad_id,
    )
    started = time.time()
    try:
        trainer.sync_policy(f"bench {task}: start weights")  # undo an earlier task's training
        print(f"[bench] {task}: evaluating the start model on held-out prompts", flush=True)
        before = evaluator.run()
        print(
            f"[bench] {task}: held-out {reward_model} reward {before['reward'][reward_model]:.4f}; training {steps} steps",
            flush=True,
        )
        summary = trainer.run()
        after = evaluator.run()
        print(
            f"[bench] {task}: held-out {reward_model} reward {before['reward'][reward_model]:.4f} -> "
            f"{after['reward'][reward_model]:.4f}, KL {after['kl']:.4f}",
            flush=True,
        )
    finally:
        trainer.close()
    png = plot_run(
        run_dir / "metrics.jsonl",
        RESULTS / ("learning.png" if task == "similarity" else f"learning-{task}.png"),
        title=f"{config.algorithm} on '{reward_model}' reward, SmolLM2-135M (LoRA r={config.lora_rank})",
    )
    records = summary["steps"]
    train_seconds = {
        phase: round(sum(r["seconds"].get(phase, 0.0) for r in records) / len(records), 2)
        for phase in records[0]["seconds"]
    }
    return {
        "task": task,
        "reward_model": reward_model,
        "reward_before": before["reward"][reward_model],
        "reward_after": after["reward"][reward_model],
        "reward_gain": after["reward"][reward_model] - before["reward"][reward_model],
        "z": z_score(before, after, reward_model),
        "z_clusters": len(after["reward_by_prompt"][reward_model]),
        "z_meaning": "held-out gain / its standard error over prompts (paired per-prompt mean differences)",
        "kl_final": after["kl"],
        "steps": steps,
        "wall_s": round(time.time() - started, 1),
        "seconds_per_step": train_seconds,
        "train_reward_first_last": [records[0]["reward_mean"], records[-1]["reward_mean"]],
        "train_kl_max": max(r["kl"] for r in records),
        "push_bytes_per_step": records[-1]["push_bytes"],
        "evaluation_before": {
            k: before[k] for k in ("reward", "reward_std", "kl", "response_length", "bleu", "samples", "example")
        },
        "evaluation_after": {
            k: after[k] for k in ("reward", "reward_std", "kl", "response_length", "bleu", "samples", "example")
        },
        "curves": str(png.relative_to(RESULTS.parent.parent))
        if png.is_relative_to(RESULTS.parent.parent)
        else str(png),
    }


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(
        LearningBenchConfig, argv, env_prefix="RLHF_BENCH_LEARNING_", prog="python -m bench.learning_bench"
    )
    setup_logging(config.log_level)
    unknown = sorted(set(config.tasks) - set(TASK_REWARD))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {sorted(TASK_REWARD)}")
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "rewards.toml").write_text(rewards_toml(config))
    model_dir = str(prepare_smollm2(Path(config.model_cache)))
    policy_port, reward_port = free_port(), free_port()
    policy = ServerProcess(
        "services.policy",
        [
            "--model",
            model_dir,
            "--port",
            str(policy_port),
            "--metrics-port",
            str(free_port()),
            "--cpu-kvcache-gib",
            f"{config.cpu_kvcache_gib:g}",
        ],
        work / "policy.log",
    )
    reward = ServerProcess(
        "services.reward",
        ["--port", str(reward_port), "--metrics-port", str(free_port()), "--models-file", str(work / "rewards.toml")],
        work / "reward.log",
    )
    started = time.time()
    tasks: dict[str, dict] = {}
    load = {"start": os.getloadavg()[0]}  # the box may be shared: say how busy it was
    try:
        print(f"[bench] starting the policy and reward services (logs in {work})", flush=True)
        policy.launch()
        reward.launch()
        reward.wait_serving(f"127.0.0.1:{reward_port}", config.start_timeout_s, progress="[bench] reward service")
        policy.wait_serving(f"127.0.0.1:{policy_port}", config.start_timeout_s, progress="[bench] policy service")
        services_s = round(time.time() - started, 1)
        for task in config.tasks:
            tasks[task] = run_task(
                task, config, model_dir, f"127.0.0.1:{policy_port}", f"127.0.0.1:{reward_port}", work
            )
            load[f"after_{task}"] = os.getloadavg()[0]
    finally:
        codes = {"policy": policy.stop(), "reward": reward.stop()}
    primary = tasks[config.tasks[0]]
    result = {
        "algorithm": config.algorithm,
        "model": "SmolLM2-135M-Instruct",
        **{
            k: primary[k]
            for k in ("task", "reward_model", "reward_before", "reward_after", "reward_gain", "z", "kl_final", "steps")
        },
        "compared": f"held-out mean reward ({primary['reward_model']}) after training (candidate) vs before (baseline)",
        "baseline": {"reward": primary["reward_before"]},
        "candidate": {"reward": primary["reward_after"], "kl_final": primary["kl_final"]},
        "ratio": round(primary["reward_after"] / primary["reward_before"], 3),
        "wall_s": round(time.time() - started, 1),
        "services_start_s": services_s,
        "load_average_1min": load,
        "tasks": tasks,
        "config": asdict(config),
        "service_exit_codes": codes,
    }
    path = write_result("learning", result)
    print(
        f"\n{'task':<11} {'reward model':<12} {'before':>8} {'after':>8} {'gain':>8} {'z':>6} {'KL':>8} {'steps':>5} {'wall s':>7}"
    )
    for t in tasks.values():
        print(
            f"{t['task']:<11} {t['reward_model']:<12} {t['reward_before']:>8.4f} {t['reward_after']:>8.4f} {t['reward_gain']:>+8.4f} "
            f"{t['z']:>6.1f} {t['kl_final']:>8.4f} {t['steps']:>5} {t['wall_s']:>7.0f}"
        )
    print(f"\n[bench] total {result['wall_s']:.0f} s; wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
