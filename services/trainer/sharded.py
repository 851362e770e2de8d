"""The Learner under torchrun: FSDP2-sharded policy and reference, rank 0 drives.

Rank 0 runs the ordinary `Trainer` (the only process that talks to the policy and
reward services, logs and writes checkpoints); its learner is a `ShardedLearner`
whose every public call first broadcasts a command code, then the call's tensors.
The other ranks sit in `follow`, receive the command and make the same call with
no arguments, so all ranks run the same collectives in the same order.

Each rank trains on an equal slice of the batch's rows. Losses are divided by the
whole batch's completion-token count and FSDP sums (not averages) the gradients,
so an update equals the single-process update on the whole batch.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.common.model_store import prepare_smollm2
from services.trainer import distributed as dist_util
from services.trainer.config import TrainerConfig
from services.trainer.learner import Learner, Prepared, lr_lambda

log = logging.getLogger(__name__)

PREPARE, UPDATE, PUSH, SAVE, STOP = range(5)

# stats that are already global after the update (the rest are per-rank partial sums)
_GLOBAL_STATS = ("grad_norm", "lr")


def _one_at_a_time(method):
    """Rank 0 may call from several threads (a replica catch-up push); commands must not interleave."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return call


@dataclass
class RolloutTensors:
    """The tensors of a `Rollout` (what the learner reads), without building it from samples."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    behaviour_logp: torch.Tensor
    mask: torch.Tensor

    def rows(self, part: slice) -> RolloutTensors:
        return RolloutTensors(
            self.input_ids[part], self.attention_mask[part], self.behaviour_logp[part], self.mask[part]
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def build_learner(config: TrainerConfig, model_dir: str, device: torch.device) -> Learner:
    """A ShardedLearner under torchrun (WORLD_SIZE > 1), the plain Learner otherwise."""
    if dist_util.world_from_env().is_distributed:
        return ShardedLearner(config, model_dir)
    return Learner(config, model_dir, device)


class ShardedLearner(Learner):
    def __init__(self, config: TrainerConfig, model_dir: str) -> None:  # noqa: D107 - no super(): sharding precedes the optimizer
        from transformers import AutoModelForCausalLM

        world, device = dist_util.setup(config.dist_backend, config.run.device)
        dist_util.check_supported(
            config.lora.rank,
            config.objective.algorithm,
            config.resume,
            config.sampling.prompts_per_step * config.sampling.samples_per_prompt,
            world.size,
        )
        self.config, self.world, self.device = config, world, device
        self._lock = threading.RLock()
        if world.is_main:  # the followers wait in `follow` until the model directory is ready
            torch.distributed.barrier()
        # loaded on the CPU and sharded there, so no device ever holds the whole model
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).requires_grad_(False)
        self.policy = dist_util.shard(policy, device, world).to(device).train()
        self.reference = dist_util.shard(reference, device, world).to(device).eval()
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.optimizer.lr_schedule, config.optimizer.warmup_steps, config.steps)
        )
        self.critic = self.critic_optimizer = self.critic_scheduler = None
        log.info("rank %d/%d: policy and reference sharded with FSDP2 on %s", world.rank, world.size, device)

    # ---- commands: rank 0 sends, followers receive in `follow` ---------------------

    def _command(self, code: int) -> None:
        if self.world.is_main:
            dist_util.broadcast_int(code, self.world, self.device)

    def _share(self, tensors: list[torch.Tensor] | None) -> list[torch.Tensor]:
        return dist_util.broadcast_tensors(tensors, self.world, self.device)

    def _gather(self, local: torch.Tensor | None) -> torch.Tensor | None:
        return None if local is None else dist_util.gather_rows(local, self.world, self.device)

    @property
    def _needs_old_logp(self) -> bool:
        return self.config.objective.ppo_epochs > 1 and self.config.objective.tis_cap > 0

    # ---- the Learner interface ------------------------------------------------------

    @_one_at_a_time
    @torch.no_grad()
    def prepare(self, rollout=None) -> Prepared:
        """Each rank computes its rows; rank 0 gets the whole batch's reference (and old) logprobs."""
        self._command(PREPARE)
        full = RolloutTensors(*self._share(_rollout_tensors(rollout) if self.world.is_main else None))
        local = super().prepare(full.rows(dist_util.row_slice(len(full), self.world)))
        return Prepared(self._gather(local.ref_logp), self._gather(local.old_logp), None)

    @_one_at_a_time
    def update(
        self,
        rollout=None,
        prepared: Prepared | None = None,
        advantages: torch.Tensor | None = None,
        returns: torch.Tensor | None = None,
        kl_coef: float | None = None,
        total_tokens: float | None = None,
    ) -> dict:
        """One update on every rank's slice; returns the whole batch's stats (as single-process).

        `total_tokens` is ignored: the denominator is always the whole broadcast batch's token count.
        """
        self._command(UPDATE)
        sent = None
        if self.world.is_main:
            sent = _rollout_tensors(rollout) + [
                prepared.ref_logp,
                advantages,
                torch.tensor([kl_coef], dtype=torch.float64),
            ]
            if self._needs_old_logp:
                sent.append(prepared.old_logp)
        received = self._share(sent)
        full = RolloutTensors(*received[:4])
        ref_logp, advantages, kl = received[4], received[5], float(received[6])
        old_logp = received[7] if self._needs_old_logp else None
        part = dist_util.row_slice(len(full), self.world)
        local_prepared = Prepared(ref_logp[part], old_logp[part] if old_logp is not None else None, None)
        total = float(full.mask.sum().clamp(min=1.0))
        stats = super().update(full.rows(part), local_prepared, advantages[part], None, kl, total_tokens=total)
        partial = {k: v for k, v in stats.items() if k not in _GLOBAL_STATS}
        return dist_util.sum_over_ranks(partial, self.world, self.device) | {k: stats[k] for k in _GLOBAL_STATS}

    @_one_at_a_time
    def push_tensors(
        self, names: set[str] | None = None, dtype: torch.dtype = torch.float32
    ) -> list[tuple[str, torch.Tensor]]:
        """Full tensors on rank 0 (empty elsewhere), gathered one at a time and cast on the way to the CPU."""
        self._command(PUSH)
        dtype = dist_util.broadcast_dtype(dtype, self.world, self.device)
        return [
            (name, t)
            for name, t in dist_util.full_tensors(self.policy, self.world, dtype)
            if names is None or name in names
        ]

    @_one_at_a_time
    def save(self, directory: Path | None = None) -> None:
        """Rank 0 writes the full model (safetensors + config), the full optimizer state and the scheduler."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        self._command(SAVE)
        weights = dict(dist_util.full_tensors(self.policy, self.world))
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optimizer_state = get_optimizer_state_dict(self.policy, self.optimizer, options=options)
        if self.world.is_main:
            save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
            self.policy.config.save_pretrained(directory)
            if self.policy.generation_config is not None:
                self.policy.generation_config.save_pretrained(directory)
            torch.save(optimizer_state, directory / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        raise ValueError("resume is not supported under torchrun (FSDP) yet")

    @_one_at_a_time
    def close(self) -> None:
        """Releases the followers (rank 0) and leaves the process group."""
        self._command(STOP)
        dist_util.teardown()

    # ---- the other ranks ------------------------------------------------------------

    def follow(self) -> None:
        """Serve rank 0's commands until it sends STOP."""
        calls = {PREPARE: self.prepare, UPDATE: self.update, PUSH: self.push_tensors, SAVE: self.save}
        while True:
            code = dist_util.broadcast_int(None, self.world, self.device)
            if code == STOP:
                break
            calls[code]()
        dist_util.teardown()


def _rollout_tensors(rollout) -> list[torch.Tensor]:
    return [rollout.input_ids, rollout.attention_mask, rollout.behaviour_logp, rollout.mask]


def follow(config: TrainerConfig) -> None:
    """A non-zero rank's whole run: join, wait until rank 0 has the model ready, then serve its commands."""
    import torch.distributed as dist

    world, _ = dist_util.setup(config.dist_backend, config.run.device)
    if threading.current_thread() is threading.main_thread():
        # a stop signal reaches every rank; rank 0 finishes its step and checkpoint (which need us), then sends STOP
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(
                sig, lambda number, _: log.info("rank %d: signal %d, waiting for rank 0 to stop", world.rank, number)
            )
    dist.barrier()  # rank 0 has resolved (and, first time, converted) the model
    torch.manual_seed(config.run.seed)
    learner = ShardedLearner(config, config.model or str(prepare_smollm2(Path(config.model_cache))))
    log.info("rank %d following rank 0", world.rank)
    learner.follow()
