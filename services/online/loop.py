"""The continuous loop: learn from live traffic, ship through the canary, repeat until stopped.

A round:
  1. read what is new in the store: live prompts (ListPrompts), denoised preference
     pairs (ListPreferences) and ratings (ListRatings);
  2. if enough pairs are new, fine-tune the reward model and hot-swap it into the
     reward service (`reward_refresh.py`);
  3. `steps_per_round` GRPO steps on live prompts plus replayed ones, sampled from
     the canary (not recorded) and scored by that reward model; a batch sampled more
     than `max_version_lag` updates before the weights it trains is dropped;
  4. the new weights go to the canary as a candidate version and are promoted to the
     stable replica or rolled back on the users' ratings (`canary.py`); after a
     rollback the trainer, too, goes back to the stable weights;
  5. a checkpoint (learner, cursors, pools, reward-model and version state) is written.

After a crash the loop starts from the newest checkpoint: the trainer holds the
stable weights there, so it puts those back on whichever replica lost them (a
restarted policy serves its start checkpoint) and rolls a half-judged canary back.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from rlhf.v1 import policy_pb2, reward_pb2
from services.common.client import wait_until_serving
from services.common.model_store import prepare_smollm2
from services.online.canary import PROMOTE, SafeRollout, Stopped
from services.online.clients import FeedbackReader, PolicyReplica, RewardScorer
from services.online.config import OnlineConfig
from services.online.prompts import PromptPool
from services.online.quality import VersionQuality
from services.online.reward_refresh import PreferenceBook, RewardRefresher
from services.online.versions import VersionAllocator
from services.trainer import checkpoint
from services.trainer.advantages import compute_advantages
from services.trainer.config import TrainerConfig
from services.trainer.learner import Learner
from services.trainer.rollout import Rollout

log = logging.getLogger(__name__)

PUSH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_FILE = "online_state.json"


def learner_config(config: OnlineConfig, model_dir: str) -> TrainerConfig:
    """The trainer settings the shared Learner reads (GRPO, constant learning rate, full or LoRA)."""
    return replace(
        TrainerConfig(), model=model_dir, samples_per_prompt=config.samples_per_prompt, max_tokens=config.max_tokens,
        temperature=config.temperature, learning_rate=config.learning_rate, kl_coef=config.kl_coef,
        micro_batch_size=config.micro_batch_size, seed=config.seed, device=config.device, steps=10**9,
        lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
    )


class OnlineTrainer:
    def __init__(self, config: OnlineConfig) -> None:
        from transformers import AutoTokenizer

        if config.push_dtype not in PUSH_DTYPES:
            raise ValueError(f"push_dtype must be one of {sorted(PUSH_DTYPES)}")
        self.config = config
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.learner = Learner(learner_config(config, self.model_dir), self.model_dir, torch.device(config.device))
        timeout, retries = config.rpc_timeout_s, config.rpc_retries
        self.stable = PolicyReplica("stable", config.stable_address, timeout, retries)
        self.canary = PolicyReplica("canary", config.canary_address, timeout, retries)
        self.reader = FeedbackReader(config.feedback_address, timeout, retries)
        self.scorer = RewardScorer(config.reward_address, timeout, retries)
        self.versions = VersionAllocator(self.out / "versions.json")
        self.quality = VersionQuality()
        self.prompts = PromptPool(config.replay_capacity, config.live_window)
        self.book = PreferenceBook(config.rm_min_agreement)
        self.refresher = RewardRefresher(config.refresh())
        self.rollout = SafeRollout(self.stable, self.canary, self.quality, self.reader, self.versions, config.canary())
        self.round = 0
        self.updates = 0  # optimizer updates made by this trainer (the unit of version lag)
        self.stable_version = 0  # the version the stable replica serves: the trainer's weights at each checkpoint
        self.resumed_from: Path | None = None
        self._last_wait = ""
        latest = checkpoint.latest_checkpoint(self.out)
        if latest is not None and not config.resume:
            raise ValueError(f"{self.out} holds checkpoints of an earlier run ({latest.name}): resume it or use another output_dir")
        if latest is not None:
            self._restore(latest)
        else:
            self.save_checkpoint()  # round 0: the start weights, what a rollback before any promotion returns to

    # ---- replicas -------------------------------------------------------------------

    def _weights(self) -> list[tuple[str, torch.Tensor]]:
        return self.learner.push_tensors(None, PUSH_DTYPES[self.config.push_dtype])

    def _put(self, replica: PolicyReplica, version: int, weights) -> bool:
        """Makes `replica` serve the trainer's weights as `version`; False when that number is taken there."""
        status = replica.status()
        self.versions.observe(status.highest_version)
        if status.weight_version == version and status.state == policy_pb2.ENGINE_STATE_SERVING:
            return True
        if version in {v.version for v in status.restorable_versions}:
            replica.rollback(version, "online loop resync")
            return True
        if version > status.highest_version:
            replica.push(weights(), version, f"online resync round {self.round}")
            return True
        return False

    def sync_replicas(self) -> None:
        """Both replicas serve the trainer's (stable) weights under one number before a round starts."""
        for replica in (self.stable, self.canary):  # a restarted replica takes a while to load its engine
            log.info("waiting for the %s replica at %s to serve", replica.name, replica.address)
            wait_until_serving(replica.address, self.config.rpc_timeout_s)
        cache: list = []

        def weights():
            if not cache:
                cache.append(self._weights())
            return cache[0]

        if not (self._put(self.stable, self.stable_version, weights) and self._put(self.canary, self.stable_version, weights)):
            fresh = self.versions.allocate()  # the number means other weights somewhere: start a new one
            log.warning("version %d is taken on a replica; serving the trainer's weights as %d", self.stable_version, fresh)
            for replica in (self.stable, self.canary):
                replica.push(weights(), fresh, f"online resync round {self.round}")
            self.stable_version = fresh

    # ---- one round --------------------------------------------------------------------

    def _read_store(self) -> None:
        self.prompts.refresh(self.reader)
        self.book.refresh(self.reader)
        self.quality.refresh(self.reader)

    def rl_step(self, index: int, start_updates: int) -> dict:
        c = self.config
        rows = self.prompts.draw(c.prompts_per_step, c.live_fraction, random)
        request = policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(token_ids=row.token_ids) for row in rows],
            sampling=policy_pb2.SamplingParams(n=c.samples_per_prompt, max_tokens=c.max_tokens, temperature=c.temperature,
                                               seed=random.getrandbits(48)),
            request_id=f"online-r{self.round + 1}-s{index}",
            recording=policy_pb2.RECORDING_MODE_OFF,  # training rollouts are not user traffic
        )
        started = time.perf_counter()
        response = self.canary.generate(request)
        sampled = {s.weight_version for r in response.results for s in r.samples}
        lag = self.updates - start_updates
        if sampled != {self.stable_version} or lag > c.max_version_lag:
            log.warning("dropping batch: sampled with versions %s, trainer at %d updates past version %d (max lag %d)",
                        sorted(sampled), lag, self.stable_version, c.max_version_lag)
            return {"step": index, "dropped": True, "sampled_versions": sorted(sampled), "lag": lag}
        generated = time.perf_counter()
        items = [reward_pb2.ScoreItem(prompt=row.text, completion=s.text) for row, r in zip(rows, response.results) for s in r.samples]
        reply = self.scorer.score(c.reward_model, items)
        scored = time.perf_counter()
        rewards = torch.tensor(list(reply.scores), dtype=torch.float32)
        rollout = Rollout.from_response(response, self.pad_id)
        prepared = self.learner.prepare(rollout)
        advantages, _ = compute_advantages("grpo", rewards, rollout.mask, c.samples_per_prompt)
        stats = self.learner.update(rollout, prepared, advantages, None, c.kl_coef)
        self.updates += 1
        return {
            "step": index, "dropped": False, "lag": lag, "reward_mean": round(float(rewards.mean()), 5),
            "reward_std": round(float(rewards.std(unbiased=False)), 5), "reward_model": f"{reply.model}@{reply.model_version}",
            "kl": round(stats["kl"], 6), "loss": round(stats["loss"], 6), "entropy": round(stats["entropy"], 4),
            "seconds": {"generate": round(generated - started, 2), "score": round(scored - generated, 2),
                        "train": round(time.perf_counter() - scored, 2)},
        }

    def run_round(self, stop: threading.Event | None = None) -> dict | None:
        """One round; None when there was nothing to train on yet (no live prompts or reward model)."""
        c = self.config
        started = time.time()
        self._read_store()
        reward_model = None
        if self.refresher.due(self.book):
            reward_model = self.refresher.retrain(self.book, random)
        hosted = self.scorer.hosted(c.reward_model)
        if not len(self.prompts) or hosted is None:
            waiting = (f"waiting: {len(self.prompts)} live prompts, {len(self.book.pairs)} preference pairs "
                       f"({len(self.book.fresh)} new; retraining at {c.rm_min_new_pairs}), reward model "
                       f"{c.reward_model!r} {'hosted' if hosted else 'not hosted yet'}")
            if waiting != self._last_wait:  # once per change, not every idle_s
                log.info(waiting)
                self._last_wait = waiting
            return None
        start_updates = self.updates
        steps = [self.rl_step(i, start_updates) for i in range(c.steps_per_round)]
        decision = None
        if self.updates > start_updates:
            decision = self.rollout.deploy(self._weights(), f"online round {self.round + 1}", self.stable_version, stop)
            if decision.action == PROMOTE:
                self.stable_version = decision.candidate_version
            else:
                self._reload_stable()
        self.round += 1
        record = {
            "round": self.round, "time": round(started, 3), "seconds": round(time.time() - started, 2),
            "stable_version": self.stable_version, "updates": self.updates, "reward_model_trained": reward_model,
            "steps": steps, "decision": decision.as_dict() if decision else None,
            "live_prompts": len(self.prompts), "preference_pairs": len(self.book.pairs),
            "quality": [s.as_dict() for s in self.quality.table()],
        }
        self.save_checkpoint()  # before the record: a round in rounds.jsonl is always in a checkpoint
        with open(self.out / "rounds.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        log.info("round %d: stable version %d, %s in %.1f s", self.round, self.stable_version,
                 f"{decision.action} {decision.candidate_version}" if decision else "no update", record["seconds"])
        return record

    def run(self, stop: threading.Event | None = None) -> dict:
        """Rounds until stopped, duration_s or max_rounds; returns a summary."""
        c = self.config
        stop = stop or threading.Event()
        deadline = time.monotonic() + c.duration_s if c.duration_s > 0 else None
        started, rounds = time.time(), []
        self.sync_replicas()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                record = self.run_round(stop)
            except Stopped as exc:
                log.info("%s; the next start rolls the canary back to version %d", exc, self.stable_version)
                break
            if record is None:
                stop.wait(c.idle_s)
                continue
            rounds.append(record)
            if c.max_rounds and len(rounds) >= c.max_rounds:
                break
        return {
            "rounds": len(rounds), "last_round": self.round, "stable_version": self.stable_version,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "decisions": [r["decision"] for r in rounds if r["decision"]],
            "reward_models": [r["reward_model_trained"] for r in rounds if r["reward_model_trained"]],
            "quality": [s.as_dict() for s in self.quality.table()], "wall_s": round(time.time() - started, 1),
        }

    # ---- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        state = {
            "round": self.round, "updates": self.updates, "stable_version": self.stable_version,
            "base_model": self.model_dir, "config": asdict(self.config),
        }
        pools = {"prompts": self.prompts.state_dict(), "preferences": self.book.state_dict(),
                 "quality": self.quality.state_dict(), "reward_model": self.refresher.state_dict()}

        def contents(directory: Path) -> None:
            self.learner.save(directory)
            (directory / STATE_FILE).write_text(json.dumps(pools))

        path = checkpoint.write_checkpoint(self.out, self.round, contents, state)
        done = sorted(p for p in (self.out / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
        for old in done[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _restore(self, path: Path) -> None:
        state = checkpoint.read_state(path)
        pools = json.loads((path / STATE_FILE).read_text())
        self.learner.load(path)
        self.round, self.updates, self.stable_version = int(state["round"]), int(state["updates"]), int(state["stable_version"])
        self.prompts.load_state_dict(pools["prompts"])
        self.book.load_state_dict(pools["preferences"])
        self.quality.load_state_dict(pools["quality"])
        self.refresher.load_state_dict(pools["reward_model"])
        checkpoint.load_rng(path)
        self.resumed_from = path
        log.info("resumed from %s: round %d, stable version %d, %d live prompts, %d preference pairs",
                 path, self.round, self.stable_version, len(self.prompts), len(self.book.pairs))

    def _reload_stable(self) -> None:
        """After a rollback the trainer, too, goes back to the stable weights (those of its last checkpoint)."""
        latest = checkpoint.latest_checkpoint(self.out)
        assert latest is not None  # one is written at round 0
        self.learner.load(latest)

    def close(self) -> None:
        for client in (self.stable, self.canary, self.reader, self.scorer):
            client.close()
