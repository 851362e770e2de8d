"""The RL loop: generate -> score -> advantages -> update -> push weights, step after step."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rlhf.v1 import policy_pb2, reward_pb2
from services.common.model_store import prepare_smollm2
from services.trainer import metrics
from services.trainer.clients import PolicyClient, RewardClient
from services.trainer.config import TrainerConfig
from services.trainer.data import PromptRow, PromptSampler, load_prompts
from services.trainer.grpo import clipped_loss, group_advantages, token_logprobs

log = logging.getLogger(__name__)

PUSH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Rollout:
    """One step's samples as padded tensors aligned for next-token logprobs.

    Column j of the [batch, length-1] tensors scores token j+1 of the sequence.
    """

    def __init__(self, sequences: list[tuple[list[int], list[int], list[float]]], pad_id: int) -> None:
        length = max(len(p) + len(c) for p, c, _ in sequences)
        batch = len(sequences)
        self.input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((batch, length), dtype=torch.long)
        self.old_logp = torch.zeros((batch, length - 1))
        self.mask = torch.zeros((batch, length - 1))
        for row, (prompt, completion, logprobs) in enumerate(sequences):
            ids = prompt + completion
            self.input_ids[row, : len(ids)] = torch.tensor(ids)
            self.attention_mask[row, : len(ids)] = 1
            start = len(prompt) - 1
            self.old_logp[row, start : start + len(completion)] = torch.tensor(logprobs)
            self.mask[row, start : start + len(completion)] = 1.0

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)


class Trainer:
    def __init__(self, config: TrainerConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if config.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2: GRPO compares samples within a group")
        if config.temperature <= 0:
            raise ValueError("temperature must be > 0 for training (the loss needs the sampling distribution)")
        if config.push_dtype not in PUSH_DTYPES:
            raise ValueError(f"push_dtype must be one of {sorted(PUSH_DTYPES)}")
        self.config = config
        torch.manual_seed(config.seed)
        self.device = torch.device(config.device)
        self.model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.policy = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to(self.device)
        self.policy.train()
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.sampler = PromptSampler(load_prompts(config.prompts_file), config.seed)
        self.policy_client = PolicyClient(config.policy_address, config.rpc_timeout_s, config.rpc_retries)
        self.reward_client = RewardClient(config.reward_address, config.rpc_timeout_s, config.rpc_retries)
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.step_number = 0
        self.records: list[dict] = []
        self.version = self.policy_client.status().weight_version
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ---- one step -----------------------------------------------------------

    def _generate(self, rows: list[PromptRow]) -> policy_pb2.GenerateResponse:
        c = self.config
        request = policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text=row.prompt, apply_chat_template=c.apply_chat_template) for row in rows],
            sampling=policy_pb2.SamplingParams(
                n=c.samples_per_prompt,
                max_tokens=c.max_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=(c.seed * 1_000_003 + self.step_number * 10_007) % (2**63),
            ),
            request_id=f"train-step-{self.step_number}",
        )
        return self.policy_client.generate(request)

    def _score(self, rows: list[PromptRow], response: policy_pb2.GenerateResponse) -> tuple[torch.Tensor, str]:
        items = [
            reward_pb2.ScoreItem(prompt=row.prompt, completion=sample.text, **({"reference": row.reference} if row.reference else {}))
            for row, result in zip(rows, response.results)
            for sample in result.samples
        ]
        scored = self.reward_client.score(self.config.reward_model, items)
        return torch.tensor(list(scored.scores), dtype=torch.float32), f"{scored.model}@{scored.model_version}"

    def _update(self, rollout: Rollout, advantages: torch.Tensor) -> dict:
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = float(rollout.mask.sum().clamp(min=1.0))
        sums = {"policy_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0, "logprob_abs_diff": 0.0}
        loss_total = 0.0
        for start in range(0, len(rollout), c.micro_batch_size):
            part = slice(start, start + c.micro_batch_size)
            ids = rollout.input_ids[part].to(self.device)
            attn = rollout.attention_mask[part].to(self.device)
            mask = rollout.mask[part].to(self.device)
            old = rollout.old_logp[part].to(self.device)
            logp = sequence_logprobs(self.policy, ids, attn, c.temperature)
            with torch.no_grad():
                ref = sequence_logprobs(self.reference, ids, attn, c.temperature)
            parts = clipped_loss(logp, old, ref, advantages[part].to(self.device), mask, c.clip_eps, c.kl_coef, total_tokens)
            parts.loss.backward()
            loss_total += float(parts.loss.detach())
            weight = float(mask.sum()) / total_tokens
            for key in ("policy_loss", "kl", "clip_fraction", "ratio_mean"):
                sums[key] += getattr(parts, key) * weight
            sums["logprob_abs_diff"] += float(((logp.detach() - old).abs() * mask).sum()) / total_tokens
        grad_norm = 0.0
        if c.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm))
        self.optimizer.step()
        return {"loss": loss_total, "grad_norm": grad_norm, **sums}

    def push_weights(self, note: str) -> policy_pb2.PushWeightsResponse:
        dtype = PUSH_DTYPES[self.config.push_dtype]
        tensors = [(name, p.detach().to("cpu", dtype)) for name, p in self.policy.named_parameters()]
        reply = self.policy_client.push(tensors, int(self.config.push_chunk_mb * 1024 * 1024), self.version, note)
        self.version = reply.weight_version
        return reply

    def step(self) -> dict:
        c = self.config
        times: dict[str, float] = {}
        started = time.perf_counter()
        rows = self.sampler.next_batch(c.prompts_per_step)
        response = self._generate(rows)
        times["generate"] = time.perf_counter() - started

        mark = time.perf_counter()
        rewards, scored_by = self._score(rows, response)
        times["score"] = time.perf_counter() - mark

        mark = time.perf_counter()
        samples = [s for result in response.results for s in result.samples]
        sequences = [
            (list(result.prompt_token_ids), list(s.token_ids), list(s.logprobs))
            for result in response.results
            for s in result.samples
        ]
        advantages = group_advantages(rewards, c.samples_per_prompt)
        keep = [i for i, (_, completion, _) in enumerate(sequences) if completion]
        rollout = Rollout([sequences[i] for i in keep], self.pad_id)
        stats = self._update(rollout, advantages[keep])
        times["train"] = time.perf_counter() - mark

        mark = time.perf_counter()
        sampled_versions = sorted({s.weight_version for s in samples})
        reply = self.push_weights(note=f"trainer step {self.step_number + 1}")
        times["push"] = time.perf_counter() - mark

        self.step_number += 1
        record = {
            "step": self.step_number,
            "weight_version": reply.weight_version,
            "sampled_with_versions": sampled_versions,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "reward_model": scored_by,
            "kl": stats["kl"],
            "loss": stats["loss"],
            "policy_loss": stats["policy_loss"],
            "clip_fraction": stats["clip_fraction"],
            "ratio_mean": stats["ratio_mean"],
            "logprob_abs_diff": stats["logprob_abs_diff"],
            "grad_norm": stats["grad_norm"],
            "completion_tokens": int(rollout.mask.sum()),
            "push_bytes": reply.total_bytes,
            "seconds": {k: round(v, 3) for k, v in times.items()},
        }
        metrics.observe_step(record)
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records.append(record)
        return record

    # ---- checkpoints and the run -------------------------------------------

    def save_checkpoint(self) -> Path:
        """Writes model, tokenizer, optimizer and position; renamed into place when complete."""
        target = self.output_dir / "checkpoints" / f"step-{self.step_number:06d}"
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        self.policy.save_pretrained(staging, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        state = {"step": self.step_number, "weight_version": self.version, "data_position": self.sampler.position}
        (staging / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return target

    def run(self) -> dict:
        c = self.config
        started = time.time()
        if self.version != 0:
            log.warning("policy serves version %d, not the start checkpoint: pushing the trainer's weights first", self.version)
            self.push_weights(note="trainer start (sync)")
        initial_version = self.version
        with logging_redirect_tqdm(), tqdm(total=c.steps, desc="training", unit="step") as bar:
            for _ in range(c.steps):
                record = self.step()
                s = record["seconds"]
                log.info(
                    "step=%d version=%d reward=%.4f±%.4f kl=%.5f loss=%.4f gen=%.1fs score=%.1fs train=%.1fs push=%.1fs",
                    record["step"], record["weight_version"], record["reward_mean"], record["reward_std"],
                    record["kl"], record["loss"], s["generate"], s["score"], s["train"], s["push"],
                )
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}", v=record["weight_version"])
                bar.update(1)
                if c.checkpoint_every and self.step_number % c.checkpoint_every == 0:
                    self.save_checkpoint()
        checkpoint = self.save_checkpoint()
        summary = {
            "algorithm": "grpo",
            "model": self.model_dir,
            "reward_model": c.reward_model,
            "initial_weight_version": initial_version,
            "final_weight_version": self.version,
            "checkpoint": str(checkpoint),
            "wall_s": round(time.time() - started, 1),
            "config": asdict(c),
            "steps": self.records,
        }
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.policy_client.close()
        self.reward_client.close()
