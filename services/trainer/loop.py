"""The RL loop: generate -> score -> advantages -> update -> push weights, step after step.

One step: take a batch (made inline, or ahead on a thread in async mode), drop it if
it was sampled too many weight versions ago, turn the reward models' scores into one
reward per sample, compute the reference logprobs (and critic values), the
advantages of the configured algorithm, update, push the new weights, log a record.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rlhf.v1 import policy_pb2
from services.clients.policy import PolicyClient
from services.clients.reward import RewardClient
from services.common.model_store import prepare_smollm2
from services.common.weight_stream import fused_groups_for, incomplete_units, torch_dtype
from services.trainer import checkpoint, lora, metrics
from services.trainer.advantages import masked_mean
from services.trainer.async_rollout import AsyncBatches, SyncBatches, take_fresh
from services.trainer.config import TrainerConfig
from services.trainer.exploration import TemperatureSchedule, exploration_record
from services.trainer.ppg import STAT_KEYS as PPG_STAT_KEYS
from services.trainer.rollout import BatchSource, Rollout, SamplingSettings
from services.trainer.sharded import build_learner
from services.trainer.tasks import RunData, task_record
from services.trainer.update import PolicyUpdate

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        policy_client: PolicyClient | None = None,
        reward_client: RewardClient | None = None,
    ) -> None:
        """`policy_client`, `reward_client`: stand-ins with the clients' surface (the step benchmark's in-process
        policy and reward models, bench/colocated.py); None: clients of config.endpoints."""
        from transformers import AutoConfig, AutoTokenizer

        self.config = config
        random.seed(config.run.seed)
        torch.manual_seed(config.run.seed)
        self.device = torch.device(config.run.device)
        self.model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.learner = build_learner(config, self.model_dir, self.device)  # FSDP-sharded under torchrun
        self.update = PolicyUpdate(config, self.learner)  # the step after sampling, shared with the online loop
        self.data = RunData.from_config(config)  # prompts, templates, tasks (multi-task: per-task rewards)
        self.update.rewards = self.data.rewards(config) or self.update.rewards
        self.kl, self.rewards = self.update.kl, self.update.rewards
        self.sampler = self.data.sampler
        calls = (config.endpoints.rpc_timeout_s, config.endpoints.rpc_retries, config.endpoints.replica_wait_s)
        self.policy_client = policy_client or PolicyClient(config.endpoints.policy, *calls)
        self.reward_client = reward_client or RewardClient(config.endpoints.reward, *calls)
        self.reward_client.models = self.data.reward_models(config)
        # a replica that missed pushes is caught up with every tensor of the current weights
        self.policy_client.full_weights = lambda: self.learner.push_tensors(None, torch_dtype(config.push.dtype))
        self.output_dir = Path(config.run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.step_number = 0
        self.data_position = 0
        self.records: list[dict] = []
        status = self.policy_client.status()
        self.version = status.weight_version
        self.served_model = status.model
        self.nccl = None  # set: pushes move over NCCL (services/trainer/nccl_push.py); None: the gRPC stream
        if config.push.weight_transfer == "nccl":
            from services.trainer.nccl_push import open_pusher

            self.nccl = open_pusher(config, self.policy_client.replicas, status)
        self.push_names = self._push_names(AutoConfig.from_pretrained(self.model_dir).model_type)
        self.resumed_from: Path | None = None
        self.synced = False  # whether this trainer has pushed all of its weights yet
        self._stop_requested = threading.Event()
        if config.resume:
            self._restore(checkpoint.resolve_resume(config.resume, self.output_dir))

    def _push_names(self, model_type: str) -> set[str] | None:
        """None: push every tensor. Otherwise the changed tensors plus the rest of their fused units."""
        if self.config.push.scope == "full":
            return None
        groups = fused_groups_for(model_type)
        if groups is None:
            raise ValueError(
                f"push_scope=changed: no fused-group table for model type {model_type!r}; use push_scope=full"
            )
        changed = lora.changed_names(self.learner.policy)
        every = [name for name, _ in lora.merged_tensors(self.learner.policy)]
        return changed | set(incomplete_units(changed, every, groups))

    @property
    def policy(self) -> torch.nn.Module:
        return self.learner.policy

    # ---- one step -----------------------------------------------------------

    def step(self) -> dict:
        c = self.config
        self._check_replicas()
        fresh = take_fresh(self.batches, self.version, c.max_staleness)
        batch, staleness = fresh.batch, fresh.staleness
        # inline batches: the wait was the generation and scoring themselves
        times = {**({"wait": fresh.wait_s} if c.async_rollouts else {}), **batch.seconds}

        mark = time.perf_counter()
        rollout = Rollout.from_response(batch.response, self.pad_id, batch.temperature)
        plan = self.update.plan(rollout, batch.scores)
        rewards, advantages, kl_coef = plan.rewards, plan.advantages, plan.kl_coef
        with self.policy_client.exclusive:  # no catch-up push reads the weights mid-update
            stats = self.update.apply(plan)
            times["train"] = time.perf_counter() - mark

            mark = time.perf_counter()
            sampled_versions = sorted(set(batch.versions))
            trained_from = self.version
            reply = self.push_weights(note=f"trainer step {self.step_number + 1}")
            times["push"] = time.perf_counter() - mark

        self.step_number += 1
        self.data_position = batch.data_position
        record = {
            "step": self.step_number,
            "algorithm": c.objective.algorithm,
            "weight_version": reply.weight_version,
            "sampled_with_versions": sampled_versions,
            "staleness": {str(k): v for k, v in sorted(Counter(staleness).items())},
            "policy_version_lag": trained_from - min(batch.versions),
            "dropped_batches": fresh.dropped,
            "aborted_samples": batch.aborted,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "reward_models": {name: round(float(s.nanmean()), 6) for name, s in batch.scores.items()},
            "reward_model": ",".join(batch.reward_versions.values()),
            "kl": stats["kl"],
            "kl_k1": stats["kl_k1"],
            "kl_k3": stats["kl_k3"],
            "kl_coef": kl_coef,
            "entropy": stats["entropy"],
            "loss": stats["loss"],
            "policy_loss": stats["policy_loss"],
            "value_loss": stats["value_loss"],
            "advantage_mean": float(masked_mean(advantages, rollout.mask)),
            "clip_fraction": stats["clip_fraction"],
            "ratio_mean": stats["ratio_mean"],
            "is_weight_mean": stats["is_weight_mean"],
            "is_truncated": stats["is_truncated"],
            "logprob_abs_diff": stats["logprob_abs_diff"],
            "grad_norm": stats["grad_norm"],
            "lr": stats["lr"],
            "completion_tokens": int(rollout.mask.sum()),
            "response_length": float(rollout.mask.sum(dim=1).float().mean()),
            "push_bytes": reply.total_bytes,
            "replicas_out_of_rotation": self.policy_client.lagging()
            + [r.name for r in self.reward_client.replicas if not r.in_rotation],
            "push_tensors": reply.num_tensors,
            "data_position": self.data_position,
            "seconds": {k: round(v, 3) for k, v in times.items()},
        }
        if self.learner.ppg is not None:
            record |= {key: stats[key] for key in PPG_STAT_KEYS}
        record |= exploration_record(
            batch.response, rewards, c.exploration.distinct_n, batch.temperature or c.sampling.temperature
        )
        if self.data.tasks:
            record["tasks"] = task_record(
                batch.rows, batch.response, rewards, self.rewards.last_raw, c.exploration.distinct_n
            )
        metrics.observe_step(record, staleness)
        checkpoint.append_metrics(self.output_dir / "metrics.jsonl", record)
        self.records.append(record)
        return record

    def _check_replicas(self) -> None:
        """Brings lagging policy replicas up to date; re-checks reward replicas' model versions."""
        if self.policy_client.lagging():
            self.policy_client.recover()
        if len(self.reward_client.replicas) > 1:
            self.reward_client.recover()

    def push_weights(self, note: str, full: bool = False) -> policy_pb2.PushWeightsResponse:
        tensors = self.learner.push_tensors(None if full else self.push_names, torch_dtype(self.config.push.dtype))
        if self.nccl is not None:
            reply = self.nccl.push(tensors, self.version, note)
            self.policy_client.status()  # the client's view of the served version follows the NCCL push
        else:
            reply = self.policy_client.push(tensors, int(self.config.push.chunk_mb * 1024 * 1024), self.version, note)
        self.version = reply.weight_version
        return reply

    # ---- checkpoints ------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step_number,
            "weight_version": self.version,
            "data_position": self.data_position,
            "kl_controller": self.kl.state_dict(),
            "reward_normalizer": self.rewards.state_dict(),
            "algorithm": self.config.objective.algorithm,
            "lora_rank": self.config.lora.rank,
            "base_model": self.model_dir,
        }

        def contents(directory: Path) -> None:
            self.learner.save(directory)
            self.tokenizer.save_pretrained(directory)

        return checkpoint.write_checkpoint(self.output_dir, self.step_number, contents, state)

    def _restore(self, path: Path) -> None:
        state = checkpoint.read_state(path)
        written = {"algorithm": self.config.objective.algorithm, "lora_rank": self.config.lora.rank}
        for key in written:
            if state[key] != written[key]:
                raise ValueError(
                    f"checkpoint {path} was written with {key}={state[key]!r}, this run has {written[key]!r}"
                )
        self.learner.load(path)
        self.step_number = int(state["step"])
        self.data_position = self.sampler.position = int(state["data_position"])
        self.kl.load_state_dict(state["kl_controller"])
        self.rewards.load_state_dict(state["reward_normalizer"])
        checkpoint.load_rng(path)
        self.resumed_from = path
        checkpoint.truncate_metrics(self.output_dir / "metrics.jsonl", self.step_number)  # later steps are redone
        log.info(
            "resumed from %s: step=%d data_position=%d kl_coef=%.5f (written at weight version %d)",
            path,
            self.step_number,
            self.data_position,
            self.kl.value,
            state["weight_version"],
        )

    # ---- the run --------------------------------------------------------------------

    def sync_policy(self, note: str) -> None:
        """Pushes every tensor, so the served weights are the trainer's whatever was served before."""
        self.push_weights(note=note, full=True)
        self.synced = True

    def run(self) -> dict:
        c = self.config
        started = time.time()
        if self.synced:
            log.info("policy already serves this trainer's weights (version %d)", self.version)
        elif self.resumed_from is not None:
            log.info("pushing the checkpoint's weights before continuing")
            self.sync_policy(note=f"trainer resume at step {self.step_number}")
        elif (
            self.version != 0 or not self.policy_client.consistent or not _same_path(self.served_model, self.model_dir)
        ):
            log.warning(
                "policy serves version %d of %s, not the trainer's start weights (%s): pushing them first",
                self.version,
                self.served_model,
                self.model_dir,
            )
            self.sync_policy(note="trainer start (sync)")
        initial_version = self.version
        s = c.sampling
        source = BatchSource(
            self.sampler,
            self.policy_client,
            self.reward_client,
            self.data.reward_models(c),
            s.prompts_per_step,
            SamplingSettings.of(s, c.apply_chat_template, c.run.seed),
            TemperatureSchedule(c.exploration, s.temperature, c.steps)
            if c.exploration.temperature_schedule != "constant"
            else None,
            self.data.templates,
            self.data.scorer(self.reward_client),
        )
        self.batches = (AsyncBatches if c.async_rollouts else SyncBatches)(source.make, self.step_number)
        try:
            with (
                logging_redirect_tqdm(),
                tqdm(total=c.steps, initial=self.step_number, desc="training", unit="step") as bar,
            ):
                while self.step_number < c.steps and not self._stop_requested.is_set():
                    record = self.step()
                    s = record["seconds"]
                    log.info(
                        "step=%d version=%d reward=%.4f±%.4f kl=%.5f entropy=%.3f loss=%.4f lag=%d gen=%.1fs score=%.1fs train=%.1fs push=%.1fs",
                        record["step"],
                        record["weight_version"],
                        record["reward_mean"],
                        record["reward_std"],
                        record["kl"],
                        record["entropy"],
                        record["loss"],
                        record["policy_version_lag"],
                        s["generate"],
                        s["score"],
                        s["train"],
                        s["push"],
                    )
                    bar.set_postfix(
                        reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}", v=record["weight_version"]
                    )
                    bar.update(1)
                    if c.checkpoint_every and self.step_number % c.checkpoint_every == 0:
                        self.save_checkpoint()
        finally:
            self.batches.close()
        path = checkpoint.checkpoint_dir(self.output_dir, self.step_number)
        if not (c.checkpoint_every and self.step_number % c.checkpoint_every == 0 and path.is_dir()):
            path = self.save_checkpoint()
        summary = {
            "algorithm": c.objective.algorithm,
            "model": self.model_dir,
            "reward_model": ",".join(c.rewards.names),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "initial_weight_version": initial_version,
            "final_weight_version": self.version,
            "checkpoint": str(path),
            "wall_s": round(time.time() - started, 1),
            "config": asdict(c),
            "steps": self.records,
        }
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def request_stop(self) -> None:
        """Ends the run after the current step (with its checkpoint and summary), e.g. on SIGTERM."""
        if not self._stop_requested.is_set():
            log.warning("stop requested: finishing step %d, then checkpointing", self.step_number + 1)
        self._stop_requested.set()

    def close(self) -> None:
        self.policy_client.close()
        self.reward_client.close()
        self.learner.close()
        if self.nccl is not None:
            self.nccl.close()


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()
