"""`python -m services.trainer evaluate`: how good is the policy being served, on held-out prompts.

Samples the held-out prompts from the running policy service (a fixed seed, so two
evaluations of different weights compare like with like), scores them with every
listed reward model, and reports per model the mean reward, the KL to the reference
checkpoint (engine logprobs against the reference's, per token), the response
length, and BLEU against the reference texts (sacrebleu's corpus BLEU, 0-100).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from services.clients.policy import PolicyClient
from services.clients.reward import RewardClient
from services.common.config import option, section
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.prompt_templates import Templates, TemplateSettings
from services.common.prompts import load_prompts
from services.common.sections import Endpoints, Sampling
from services.trainer.curves import plot_run
from services.trainer.losses import kl_estimate
from services.trainer.rollout import (
    Rollout,
    SamplingSettings,
    first_completion_column,
    generate,
    score,
    sequence_logprobs,
)
from services.trainer.tasks import load_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate the served policy on held-out prompts (JSON out; optionally plot a run's curves)."""

    reward_models: tuple[str, ...] = option(("similarity",), "Reward models to report (comma-separated).")
    model: str = option(
        "", "Reference checkpoint for the KL (the run's start). Empty: SmolLM2-135M-Instruct from the model cache."
    )
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    prompts_file: str = option("data/book_reviews_heldout.jsonl", "Held-out JSONL with {prompt, reference} per line.")
    apply_chat_template: bool = option(True, "Send prompts through the model's chat template.")
    seed: int = option(1234, "Sampling seed (fixed: evaluations of different weights see the same random numbers).")
    micro_batch_size: int = option(8, "Samples per reference forward pass.")
    output: str = option("", "Also write the JSON here.")
    run_dir: str = option("", "Also plot this run's metrics.jsonl to <run_dir>/curves.png.")
    log_level: str = option("INFO", "Python logging level.")
    tasks_file: str = option(
        "",
        "The training run's tasks TOML: its tasks' templates apply, as in training. Rewards are "
        "also reported per task whenever rows carry a task.",
    )
    templates: TemplateSettings = section(TemplateSettings(), "Prompt templates, as the training run's.")
    sampling: Sampling = section(
        Sampling(prompts_per_step=8),
        "How held-out samples are drawn (prompts_per_step: "
        "prompts per Generate request; keep temperature and top_p the training run's: "
        "the KL is of this distribution).",
    )
    endpoints: Endpoints = section(Endpoints(), "The policy and reward services.")

    def __post_init__(self) -> None:
        if not self.reward_models or self.micro_batch_size < 1:
            raise ValueError("reward_models must name at least one model and micro_batch_size be >= 1")
        if self.sampling.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0: the KL is of the sampling distribution")


def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


class Evaluator:
    """Runs evaluations; the reference logprobs come from a given function or a loaded checkpoint."""

    def __init__(
        self,
        config: EvaluateConfig,
        policy: PolicyClient | None = None,
        reward: RewardClient | None = None,
        reference_logprobs: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        pad_id: int | None = None,
    ) -> None:
        self.config = config
        self.rows = load_prompts(config.prompts_file)
        task_templates = {}
        if config.tasks_file:
            task_templates = {name: t.template for name, t in load_tasks(config.tasks_file).items() if t.template}
        self.templates = Templates.from_settings(config.templates, task_templates)
        self.templates.check_rows(self.rows, config.prompts_file)
        self._own_clients = policy is None
        calls = (config.endpoints.rpc_timeout_s, config.endpoints.rpc_retries, config.endpoints.replica_wait_s)
        self.policy = policy or PolicyClient(config.endpoints.policy, *calls)
        self.reward = reward or RewardClient(config.endpoints.reward, *calls)
        if reference_logprobs is None:
            reference_logprobs, pad_id = self._load_reference()
        self.reference_logprobs, self.pad_id = reference_logprobs, pad_id or 0

    def _load_reference(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = self.config.model or str(prepare_smollm2(Path(self.config.model_cache)))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        temperature = self.config.sampling.temperature
        return (
            lambda ids, attn, first: sequence_logprobs(model, ids, attn, temperature, first)
        ), tokenizer.pad_token_id

    @torch.no_grad()
    def _reference(self, rollout: Rollout) -> torch.Tensor:
        size = self.config.micro_batch_size
        parts = [
            self.reference_logprobs(
                rollout.input_ids[i : i + size],
                rollout.attention_mask[i : i + size],
                first_completion_column(rollout.mask[i : i + size]),
            )
            for i in range(0, len(rollout), size)
        ]
        return torch.cat(parts).cpu()

    def run(self) -> dict:
        c = self.config
        started = time.perf_counter()
        s = c.sampling
        settings = SamplingSettings.of(s, c.apply_chat_template, c.seed)
        scores: dict[str, list[torch.Tensor]] = {name: [] for name in c.reward_models}
        texts, references, versions, kl_k1, kl_k3, lengths = [], [], set(), [], [], []
        for index, start in enumerate(range(0, len(self.rows), s.prompts_per_step)):
            rows = self.rows[start : start + s.prompts_per_step]
            response = generate(self.policy, rows, settings, index, "evaluate", self.templates)
            batch_scores, _ = score(self.reward, c.reward_models, rows, response)
            for name, values in batch_scores.items():
                scores[name].append(values)
            for row, result in zip(rows, response.results):
                for sample in result.samples:
                    texts.append(sample.text)
                    references.append(row.reference or "")
                    versions.add(sample.weight_version)
            rollout = Rollout.from_response(response, self.pad_id)
            ref = self._reference(rollout)
            mask = rollout.mask
            kl_k1.append((kl_estimate(rollout.behaviour_logp, ref, "k1") * mask).sum(dim=1))
            kl_k3.append((kl_estimate(rollout.behaviour_logp, ref, "k3") * mask).sum(dim=1))
            lengths.append(mask.sum(dim=1))
        tokens = torch.cat(lengths)
        total_tokens = float(tokens.sum().clamp(min=1.0))
        merged = {name: torch.cat(values) for name, values in scores.items()}
        result = {
            "weight_versions": sorted(versions),
            "prompts": len(self.rows),
            "samples": len(texts),
            "reward": {name: float(v.mean()) for name, v in merged.items()},
            "reward_std": {name: float(v.std(unbiased=False)) for name, v in merged.items()},
            # samples of one prompt are not independent: statistics over prompts need the per-prompt means
            "reward_by_prompt": {name: v.view(len(self.rows), -1).mean(dim=1).tolist() for name, v in merged.items()},
            "reward_by_task": _by_task(self.rows, merged),
            "templates": sorted({self.templates.resolve(row).name for row in self.rows}),
            "kl": float(torch.cat(kl_k3).sum()) / total_tokens,
            "kl_k1": float(torch.cat(kl_k1).sum()) / total_tokens,
            "kl_sequence": float(torch.cat(kl_k1).mean()),
            "response_length": float(tokens.float().mean()),
            "bleu": bleu(texts, references) if all(references) else None,
            "seconds": round(time.perf_counter() - started, 2),
            "config": asdict(c),
            "example": {"prompt": self.rows[0].prompt, "completion": texts[0]},
        }
        return result

    def close(self) -> None:
        if self._own_clients:
            self.policy.close()
            self.reward.close()


def _by_task(rows, merged: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{task: {model: mean reward over the task's samples}} when rows carry tasks (else {})."""
    tasks = [row.task for row in rows]
    if not any(tasks):
        return {}
    out = {}
    for task in dict.fromkeys(tasks):
        chosen = torch.tensor([t == task for t in tasks])
        out[task or "(none)"] = {name: float(v.view(len(rows), -1)[chosen].mean()) for name, v in merged.items()}
    return out


def run_evaluate(config: EvaluateConfig) -> dict:
    evaluator = Evaluator(config)
    try:
        result = evaluator.run()
    finally:
        evaluator.close()
    if config.run_dir:
        result["curves"] = str(plot_run(Path(config.run_dir) / "metrics.jsonl", Path(config.run_dir) / "curves.png"))
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(result, indent=2))
    return result
