"""One RL run of a benchmark: start weights, held-out evaluation, training, held-out evaluation again.

The learning and exploration benchmarks differ only in what they train (task, tasks, temperature
schedule) and in what they compare; the services (bench.stack), the reward TOML, the run itself
and the statistics over held-out prompts are this one module, so both judge runs the same way.

Statistics: the samples of one held-out prompt share it and are not independent, so the unit is
the prompt. Two evaluations of the same prompts with the same sampling seed are paired: per
prompt, the mean reward of one minus the other; their mean, its standard error over prompts, a
95% t-interval, and z = mean / standard error.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from services.common.config import build
from services.trainer.config import TrainerConfig
from services.trainer.evaluate import EvaluateConfig, Evaluator
from services.trainer.loop import Trainer

# two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def rewards_toml(models: tuple[str, ...], rules_target_words: int, rules_required_word: str) -> str:
    """The reward service's models file: `similarity` and/or `rules` (about N words using a word)."""
    tables = {
        "similarity": '[[models]]\nname = "similarity"\nkind = "similarity"\n',
        "rules": (
            '[[models]]\nname = "rules"\nkind = "rules"\n'
            f'target_words = {rules_target_words}\nrequired_words = ["{rules_required_word}"]\n'
        ),
    }
    unknown = sorted(set(models) - set(tables))
    if unknown:
        raise ValueError(f"no reward model {unknown}; the benchmarks know {sorted(tables)}")
    return "\n".join(tables[m] for m in models)


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_difference(first: list[float], second: list[float]) -> dict:
    """second - first, paired by prompt: mean, standard error, 95% interval, z and n (prompts)."""
    diffs = [b - a for a, b in zip(first, second, strict=True)]
    if len(diffs) < 2:
        raise ValueError("a paired interval needs at least 2 held-out prompts")
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) / math.sqrt(n)
    half = t975(n - 1) * se
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half], "z": mean / max(se, 1e-12), "n": n}


def z_score(before: dict, after: dict, model: str) -> float:
    """Held-out gain of `model`'s reward over its standard error, clustered by prompt (paired per-prompt means)."""
    return paired_difference(before["reward_by_prompt"][model], after["reward_by_prompt"][model])["z"]


def gain(before: dict, after: dict, model: str) -> dict:
    """How `model`'s held-out reward moved in one run: before, after, and the paired gain with its interval."""
    stats = paired_difference(before["reward_by_prompt"][model], after["reward_by_prompt"][model])
    return {
        "before": before["reward"][model],
        "after": after["reward"][model],
        "gain": stats["mean"],
        "gain_ci95": stats["ci95"],
        "z": stats["z"],
        "n_prompts": stats["n"],
    }


def train_and_evaluate(
    config: TrainerConfig,
    reward_models: tuple[str, ...],
    heldout_file: str,
    eval_samples_per_prompt: int,
    eval_seed: int,
    label: str,
    eval_temperature: float | None = None,
) -> dict:
    """Resets the policy to the start weights, evaluates, trains `config.steps` steps, evaluates again.

    Both evaluations sample the same held-out prompts with the same seed, so they pair by prompt.
    Returns {"before", "after", "steps" (the run's step records), "wall_s"}.
    """
    run_dir = Path(config.run.output_dir)
    for stale in ("metrics.jsonl", "summary.json"):
        (run_dir / stale).unlink(missing_ok=True)
    overrides = {
        "reward_models": reward_models,
        "prompts_file": heldout_file,
        "sampling.samples_per_prompt": eval_samples_per_prompt,
        "sampling.max_tokens": config.sampling.max_tokens,
        "seed": eval_seed,
    }
    if eval_temperature is not None:
        overrides["sampling.temperature"] = eval_temperature
    trainer = Trainer(config)
    evaluator = Evaluator(
        build(EvaluateConfig, overrides),
        trainer.policy_client,
        trainer.reward_client,
        trainer.learner.reference_logprobs,
        trainer.pad_id,
    )
    started = time.time()
    try:
        trainer.sync_policy(f"{label}: start weights")  # undo an earlier run's training
        print(f"[{label}] evaluating the start model on held-out prompts", flush=True)
        before = evaluator.run()
        print(f"[{label}] held-out reward {_rewards(before)}; training {config.steps} steps", flush=True)
        summary = trainer.run()
        after = evaluator.run()
        print(f"[{label}] held-out reward {_rewards(before)} -> {_rewards(after)}, KL {after['kl']:.4f}", flush=True)
    finally:
        trainer.close()
    return {"before": before, "after": after, "steps": summary["steps"], "wall_s": round(time.time() - started, 1)}


def _rewards(evaluation: dict) -> str:
    return ", ".join(f"{m} {v:.4f}" for m, v in evaluation["reward"].items())
