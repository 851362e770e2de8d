"""Learning benchmark: does RL against the reward service raise the held-out reward, alone and jointly?

    python -m bench.learning_bench [--similarity-steps 8] [--rules-steps 8] [--algorithm grpo] ...
    (make bench-learning)

Starts the policy (SmolLM2-135M-Instruct) and reward services, then for each task
(the seed's "similarity" reward against the reference reviews, and a rules reward:
about `rules_target_words` words that use the word `rules_required_word`):
resets the policy to the start weights, evaluates the held-out prompts
(data/book_reviews_heldout.jsonl, never trained on) with a fixed sampling seed,
trains, and evaluates again with the same seed. Then the joint run: both tasks in one
multi-task run (services/trainer/tasks.py: every training prompt once per task, per-task
rewards and running normalisation) of similarity_steps + rules_steps steps, prompts drawn
by those shares, so each task gets exactly the samples of its single-task run; each task's
joint result is compared with its single-task run at that same number of samples.

Writes bench/results/learning.json (top level: the similarity task; `tasks` holds the
single-task runs, `joint` the joint run and its comparison) and the training curves
bench/results/learning.png (similarity), learning-rules.png and learning-joint.png.

"Clearly above" is reported, not assumed: the unit of every interval is the held-out prompt
(its samples are not independent); see bench/rl_runs.py.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import RESULTS, write_result
from bench.rl_runs import gain, paired_difference, rewards_toml, train_and_evaluate, z_score
from bench.stack import services
from services.common.config import load_config, option
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.prompts import load_prompts
from services.common.sections import Endpoints, Lora, Optimizer, Push, Run, Sampling
from services.common.server import setup_logging
from services.trainer.config import Objective, Rewards, TrainerConfig
from services.trainer.curves import plot_run
from services.trainer.tasks import TaskSettings

__all__ = ["LearningBenchConfig", "main", "z_score"]

log = logging.getLogger("bench.learning")

TASK_REWARD = {"similarity": "similarity", "rules": "rules"}
EVALUATED = tuple(TASK_REWARD.values())  # every run is judged by both tasks' rewards (cross-task effects)


@dataclass(frozen=True)
class LearningBenchConfig:
    """Train SmolLM2-135M against the reward service on two tasks and measure the held-out reward."""

    tasks: tuple[str, ...] = option(("similarity", "rules"), "Tasks, in order: similarity and/or rules.")
    similarity_steps: int = option(8, "Training steps of the similarity task.")
    rules_steps: int = option(8, "Training steps of the rules task.")
    joint: bool = option(
        True,
        "Also train both tasks in one multi-task run of similarity_steps + rules_steps steps (prompts drawn by "
        "those shares) and compare each task with its single-task run at the same number of samples.",
    )
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
        if self.joint and (set(self.tasks) != set(TASK_REWARD) or min(self.similarity_steps, self.rules_steps) < 1):
            raise ValueError(
                "joint needs both tasks (tasks=similarity,rules) with similarity_steps and rules_steps >= 1; "
                "--no-joint runs the single-task runs only"
            )


def trainer_config(config: LearningBenchConfig, steps: int, run_dir: Path, policy: str, reward: str, **kw):
    """The one training setup every run of this benchmark shares; `kw` sets what a run adds (rewards, tasks)."""
    return TrainerConfig(
        model=kw.pop("model"),
        prompts_file=kw.pop("prompts_file", config.prompts_file),
        steps=steps,
        sampling=Sampling(
            prompts_per_step=config.prompts_per_step,
            samples_per_prompt=config.samples_per_prompt,
            max_tokens=config.max_tokens,
        ),
        objective=Objective(
            algorithm=config.algorithm, kl_coef=config.kl_coef, critic_learning_rate=config.learning_rate
        ),
        optimizer=Optimizer(learning_rate=config.learning_rate, micro_batch_size=config.micro_batch_size),
        lora=Lora(rank=config.lora_rank, targets=config.lora_targets),
        push=Push(scope="changed" if config.lora_rank else "full"),
        endpoints=Endpoints(policy=policy, reward=reward),
        run=Run(output_dir=str(run_dir), seed=config.seed),
        **kw,
    )


def _evaluation(e: dict) -> dict:
    return {
        k: e[k]
        for k in ("reward", "reward_std", "reward_by_prompt", "kl", "response_length", "bleu", "samples", "example")
    }


def _seconds_per_step(records: list[dict]) -> dict:
    return {
        phase: round(sum(r["seconds"].get(phase, 0.0) for r in records) / len(records), 2)
        for phase in records[0]["seconds"]
    }


def _curves(config: LearningBenchConfig, run_dir: Path, name: str, title: str) -> str:
    png = plot_run(
        run_dir / "metrics.jsonl",
        RESULTS / name,
        title=f"{config.algorithm} on {title}, SmolLM2-135M (LoRA r={config.lora_rank})",
    )
    root = RESULTS.parent.parent
    return str(png.relative_to(root)) if png.is_relative_to(root) else str(png)


def run_task(task: str, config: LearningBenchConfig, model_dir: str, policy: str, reward: str, work: Path) -> dict:
    steps = config.similarity_steps if task == "similarity" else config.rules_steps
    reward_model = TASK_REWARD[task]
    run_dir = work / task
    trainer = trainer_config(
        config, steps, run_dir, policy, reward, model=model_dir, rewards=Rewards(model=reward_model)
    )
    run = train_and_evaluate(
        trainer, EVALUATED, config.heldout_file, config.eval_samples_per_prompt, config.seed + 1234, f"bench {task}"
    )
    before, after, records = run["before"], run["after"], run["steps"]
    png = _curves(
        config, run_dir, "learning.png" if task == "similarity" else f"learning-{task}.png", f"'{reward_model}' reward"
    )
    return {
        "task": task,
        "reward_model": reward_model,
        "reward_before": before["reward"][reward_model],
        "reward_after": after["reward"][reward_model],
        "reward_gain": after["reward"][reward_model] - before["reward"][reward_model],
        "z": z_score(before, after, reward_model),
        "z_clusters": len(after["reward_by_prompt"][reward_model]),
        "z_meaning": "held-out gain / its standard error over prompts (paired per-prompt mean differences)",
        "gain": {m: gain(before, after, m) for m in EVALUATED},
        "kl_final": after["kl"],
        "steps": steps,
        "train_samples": steps * config.prompts_per_step * config.samples_per_prompt,
        "wall_s": run["wall_s"],
        "seconds_per_step": _seconds_per_step(records),
        "train_reward_first_last": [records[0]["reward_mean"], records[-1]["reward_mean"]],
        "train_kl_max": max(r["kl"] for r in records),
        "push_bytes_per_step": records[-1]["push_bytes"],
        "evaluation_before": _evaluation(before),
        "evaluation_after": _evaluation(after),
        "curves": png,
    }


def joint_files(config: LearningBenchConfig, work: Path) -> tuple[Path, Path]:
    """Every training prompt once per task, and a tasks TOML whose weights are the single-task step counts."""
    rows = load_prompts(config.prompts_file)
    prompts = work / "joint-prompts.jsonl"
    with prompts.open("w", encoding="utf-8") as out:
        for task in TASK_REWARD:
            for row in rows:
                out.write(json.dumps({"prompt": row.prompt, "reference": row.reference, "task": task}) + "\n")
    steps = {"similarity": config.similarity_steps, "rules": config.rules_steps}
    tasks = work / "joint-tasks.toml"
    tasks.write_text(
        "".join(f'[tasks.{t}]\nreward_models = ["{m}"]\nweight = {steps[t]}\n\n' for t, m in TASK_REWARD.items())
    )
    return prompts, tasks


def run_joint(
    config: LearningBenchConfig, single: dict[str, dict], model_dir: str, policy: str, reward: str, work: Path
) -> dict:
    """Both tasks in one run; each task against its single-task run, per held-out prompt, at equal samples."""
    prompts, tasks = joint_files(config, work)
    steps = config.similarity_steps + config.rules_steps
    run_dir = work / "joint"
    trainer = trainer_config(
        config,
        steps,
        run_dir,
        policy,
        reward,
        model=model_dir,
        prompts_file=str(prompts),
        tasks=TaskSettings(file=str(tasks)),
    )
    run = train_and_evaluate(
        trainer, EVALUATED, config.heldout_file, config.eval_samples_per_prompt, config.seed + 1234, "bench joint"
    )
    before, after, records = run["before"], run["after"], run["steps"]
    per_task = {}
    for task, model in TASK_REWARD.items():
        samples = sum(r["tasks"].get(task, {}).get("samples", 0) for r in records)
        mine = [r["tasks"][task]["reward_mean"] for r in records if task in r["tasks"]]  # steps that drew the task
        alone = single[task]
        gains_alone = _per_prompt_gain(alone["evaluation_before"], alone["evaluation_after"], model)
        gains_joint = _per_prompt_gain(before, after, model)
        versus = paired_difference(gains_alone, gains_joint)
        per_task[task] = {
            "reward_model": model,
            "train_samples": samples,
            "single_task_train_samples": alone["train_samples"],
            "joint": gain(before, after, model),
            "single_task": alone["gain"][model],
            "joint_minus_single_gain": versus["mean"],
            "joint_minus_single_gain_ci95": versus["ci95"],
            "joint_minus_single_z": versus["z"],
            "n_prompts": versus["n"],
            "train_reward_first_last": [mine[0], mine[-1]],
        }
    return {
        "steps": steps,
        "task_weights": {"similarity": config.similarity_steps, "rules": config.rules_steps},
        "tasks": per_task,
        "compared": (
            "per task: held-out gain (after - before, per prompt) of the joint run minus that of the single-task "
            "run with the same training samples of the task; mean, 95% t-interval and z over held-out prompts"
        ),
        "kl_final": after["kl"],
        "wall_s": run["wall_s"],
        "seconds_per_step": _seconds_per_step(records),
        "evaluation_before": _evaluation(before),
        "evaluation_after": _evaluation(after),
        "curves": _curves(config, run_dir, "learning-joint.png", "'similarity' + 'rules' tasks jointly"),
    }


def _per_prompt_gain(before: dict, after: dict, model: str) -> list[float]:
    return [b - a for a, b in zip(before["reward_by_prompt"][model], after["reward_by_prompt"][model], strict=True)]


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(
        LearningBenchConfig, argv, env_prefix="RLHF_BENCH_LEARNING_", prog="python -m bench.learning_bench"
    )
    setup_logging(config.log_level)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = str(prepare_smollm2(Path(config.model_cache)))
    toml = rewards_toml(EVALUATED, config.rules_target_words, config.rules_required_word)
    started = time.time()
    tasks: dict[str, dict] = {}
    joint = None
    load = {"start": os.getloadavg()[0]}  # the box may be shared: say how busy it was
    with services(
        model_dir,
        toml,
        work,
        kvcache_gib=int(config.cpu_kvcache_gib),
        start_timeout_s=config.start_timeout_s,
        label="bench",
    ) as stack:
        policy, reward = stack.policy[0], stack.reward
        for task in config.tasks:
            tasks[task] = run_task(task, config, model_dir, policy, reward, work)
            load[f"after_{task}"] = os.getloadavg()[0]
        if config.joint:
            joint = run_joint(config, tasks, model_dir, policy, reward, work)
            load["after_joint"] = os.getloadavg()[0]
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
        "services_start_s": stack.started_s,
        "load_average_1min": load,
        "tasks": tasks,
        "joint": joint,
        "config": asdict(config),
        "service_exit_codes": stack.exit_codes,
    }
    path = write_result("learning", result)
    print(
        f"\n{'run':<18} {'reward':<11} {'before':>8} {'after':>8} {'gain':>8} {'95% CI':>17} {'steps':>5} {'wall s':>7}"
    )
    for t in tasks.values():
        g = t["gain"][t["reward_model"]]
        print(
            f"{t['task']:<18} {t['reward_model']:<11} {g['before']:>8.4f} {g['after']:>8.4f} {g['gain']:>+8.4f} "
            f"{_ci(g['gain_ci95']):>17} {t['steps']:>5} {t['wall_s']:>7.0f}"
        )
    if joint:
        for task, j in joint["tasks"].items():
            g = j["joint"]
            print(
                f"{'joint: ' + task:<18} {j['reward_model']:<11} {g['before']:>8.4f} {g['after']:>8.4f} {g['gain']:>+8.4f} "
                f"{_ci(g['gain_ci95']):>17} {joint['steps']:>5} {joint['wall_s']:>7.0f}"
            )
        for task, j in joint["tasks"].items():
            print(
                f"[bench] {task}: joint gain - single-task gain at {j['train_samples']} samples each = "
                f"{j['joint_minus_single_gain']:+.4f}, 95% CI {_ci(j['joint_minus_single_gain_ci95'])} "
                f"(n = {j['n_prompts']} held-out prompts)"
            )
    print(f"\n[bench] total {result['wall_s']:.0f} s; wrote {path}", flush=True)
    return result


def _ci(interval: list[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


if __name__ == "__main__":
    main()
