"""The continuous loop: learn from live traffic, ship through the canary, repeat until stopped.

A round:
  1. read what is new in the store: live prompts (ListPrompts), denoised preference
     pairs (ListPreferences) and ratings (ListRatings);
  2. if enough pairs are new, fine-tune the reward model and hot-swap it into the
     reward service (`reward_refresh.py`);
  3. `steps_per_round` RL steps on live prompts plus replayed ones, sampled from the
     canary (not recorded) and scored by that reward model; a batch sampled more than
     `max_version_lag` updates before the weights it trains is dropped. A step is the
     trainer's own (`services/trainer/update.py`): every algorithm, LoRA, TIS and KL
     setting of the config's trainer sections applies;
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
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rlhf.v1 import policy_pb2, reward_pb2
from services.clients.feedback import FeedbackReader
from services.clients.policy import PolicyReplica
from services.clients.reward import RewardClient
from services.common.client import wait_until_serving
from services.common.model_store import prepare_smollm2
from services.common.weight_stream import torch_dtype
from services.online.canary import PROMOTE, SafeRollout, Stopped
from services.online.config import OnlineConfig
from services.online.hacking_guard import ProxyScores, RewardHackingGuard
from services.online.prompts import PromptPool
from services.online.quality import VersionQuality
from services.online.reward_refresh import PreferenceBook, RewardRefresher
from services.online.versions import VersionAllocator
from services.trainer import checkpoint
from services.trainer.learner import Learner
from services.trainer.rollout import Rollout
from services.trainer.update import PolicyUpdate

log = logging.getLogger(__name__)

STATE_FILE = "online_state.json"


class OnlineTrainer:
    def __init__(self, config: OnlineConfig) -> None:
        from transformers import AutoTokenizer

        self.config = config
        random.seed(config.run.seed)
        torch.manual_seed(config.run.seed)
        self.out = Path(config.run.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        trainer_config = config.trainer_config(self.model_dir)
        self.learner = Learner(trainer_config, self.model_dir, torch.device(config.run.device))
        self.update = PolicyUpdate(trainer_config, self.learner)  # the trainer's step after sampling
        endpoints = config.endpoints
        timeout, retries = endpoints.rpc_timeout_s, endpoints.rpc_retries
        self.stable = PolicyReplica("stable", endpoints.policy, timeout, retries)
        self.canary = PolicyReplica("canary", config.canary_address, timeout, retries)
        self.reader = FeedbackReader(endpoints.feedback, timeout, retries)
        self.scorer = RewardClient(endpoints.reward, timeout, retries)
        self.versions = VersionAllocator(self.out / "versions.json")
        self.quality = VersionQuality()
        self.prompts = PromptPool(config.replay_capacity, config.live_window)
        self.book = PreferenceBook(config.rm_min_agreement, heldout_share=config.rm_heldout_share)
        self.refresher = RewardRefresher(config.refresh())
        self.rollout = SafeRollout(self.stable, self.canary, self.quality, self.reader, self.versions, config.canary)
        self.rollout.guard = RewardHackingGuard(
            config.guard, ProxyScores(self.reader, self.scorer, config.rewards.model)
        )
        self.round = 0
        self.updates = 0  # optimizer updates made by this trainer (the unit of version lag)
        self.stable_version = 0  # the version the stable replica serves: the trainer's weights at each checkpoint
        self.resumed_from: Path | None = None
        self._last_wait = ""
        self.last_reward_model: dict | None = None  # the newest refresh, also when its round is stopped before the end
        latest = checkpoint.latest_checkpoint(self.out)
        if latest is not None and not config.resume:
            raise ValueError(
                f"{self.out} holds checkpoints of an earlier run ({latest.name}): resume it or use another output_dir"
            )
        if latest is not None:
            self._restore(latest)
        else:
            self.save_checkpoint()  # round 0: the start weights, what a rollback before any promotion returns to

    # ---- replicas -------------------------------------------------------------------

    def _weights(self) -> list[tuple[str, torch.Tensor]]:
        return self.learner.push_tensors(None, torch_dtype(self.config.push.dtype))

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
            endpoints = self.config.endpoints  # a restarted replica reloads its engine: allow replica_wait_s
            wait_until_serving(replica.address, max(endpoints.rpc_timeout_s, endpoints.replica_wait_s))
        cache: list = []

        def weights():
            if not cache:
                cache.append(self._weights())
            return cache[0]

        if not (
            self._put(self.stable, self.stable_version, weights)
            and self._put(self.canary, self.stable_version, weights)
        ):
            fresh = self.versions.allocate()  # the number means other weights somewhere: start a new one
            log.warning(
                "version %d is taken on a replica; serving the trainer's weights as %d", self.stable_version, fresh
            )
            for replica in (self.stable, self.canary):
                replica.push(weights(), fresh, f"online resync round {self.round}")
            self.stable_version = fresh

    # ---- one round --------------------------------------------------------------------

    def _read_store(self) -> None:
        self.prompts.refresh(self.reader)
        self.book.refresh(self.reader)
        self.quality.refresh(self.reader)

    def rl_step(self, index: int, start_updates: int) -> dict:
        c, s = self.config, self.config.sampling
        rows = self.prompts.draw(s.prompts_per_step, c.live_fraction, random)
        request = policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(token_ids=row.token_ids) for row in rows],
            sampling=policy_pb2.SamplingParams(
                n=s.samples_per_prompt,
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                # No seed: the canary serves users at the same time, and vLLM 0.32's CPU runner fails a seeded
                # request whose prefill is chunked under load ("CPU Generator does not use offset"), as the
                # simulator found; a live engine's batching makes these samples irreproducible anyway.
            ),
            request_id=f"online-r{self.round + 1}-s{index}",
            recording=policy_pb2.RECORDING_MODE_OFF,  # training rollouts are not user traffic
        )
        started = time.perf_counter()
        response = self.canary.generate(request)
        sampled = {s.weight_version for r in response.results for s in r.samples}
        lag = self.updates - start_updates
        if sampled != {self.stable_version} or lag > c.max_version_lag:
            log.warning(
                "dropping batch: sampled with versions %s, trainer at %d updates past version %d (max lag %d)",
                sorted(sampled),
                lag,
                self.stable_version,
                c.max_version_lag,
            )
            return {"step": index, "dropped": True, "sampled_versions": sorted(sampled), "lag": lag}
        generated = time.perf_counter()
        items = [
            reward_pb2.ScoreItem(prompt=row.text, completion=s.text)
            for row, r in zip(rows, response.results)
            for s in r.samples
        ]
        reply = self.scorer.score(c.rewards.model, items)
        scored = time.perf_counter()
        scores = {c.rewards.model: torch.tensor(list(reply.scores), dtype=torch.float32)}
        plan = self.update.plan(Rollout.from_response(response, self.pad_id), scores)
        stats = self.update.apply(plan)
        rewards = plan.rewards
        self.updates += 1
        return {
            "step": index,
            "dropped": False,
            "lag": lag,
            "algorithm": c.objective.algorithm,
            "lora_rank": c.lora.rank,
            "kl_coef": round(plan.kl_coef, 6),
            "reward_mean": round(float(rewards.mean()), 5),
            "reward_std": round(float(rewards.std(unbiased=False)), 5),
            "reward_model": f"{reply.model}@{reply.model_version}",
            "kl": round(stats["kl"], 6),
            "loss": round(stats["loss"], 6),
            "entropy": round(stats["entropy"], 4),
            "seconds": {
                "generate": round(generated - started, 2),
                "score": round(scored - generated, 2),
                "train": round(time.perf_counter() - scored, 2),
            },
        }

    def run_round(self, stop: threading.Event | None = None) -> dict | None:
        """One round; None when there was nothing to train on yet (no live prompts or reward model)."""
        c = self.config
        started = time.time()
        self._read_store()
        reward_model = None
        if self.refresher.due(self.book):
            reward_model = self.refresher.retrain(self.book, random)
            self.last_reward_model = reward_model or self.last_reward_model
        hosted = self.scorer.hosted(c.rewards.model)
        if not len(self.prompts) or hosted is None:
            waiting = (
                f"waiting: {len(self.prompts)} live prompts, {len(self.book.pairs)} preference pairs "
                f"({len(self.book.fresh)} new; retraining at {c.rm_min_new_pairs}), reward model "
                f"{c.rewards.model!r} {'hosted' if hosted else 'not hosted yet'}"
            )
            if waiting != self._last_wait:  # once per change, not every idle_s
                log.info(waiting)
                self._last_wait = waiting
            return None
        start_updates = self.updates
        steps = []
        for index in range(c.steps_per_round):
            if stop is not None and stop.is_set():  # SIGTERM within a step, not a round; the checkpoint is intact
                raise Stopped(f"stopped before RL step {index + 1} of round {self.round + 1}")
            steps.append(self.rl_step(index, start_updates))
        decision = None
        if self.updates > start_updates:
            decision = self.rollout.deploy(self._weights(), f"online round {self.round + 1}", self.stable_version, stop)
            if decision.action == PROMOTE:
                self.stable_version = decision.candidate_version
            else:
                self._reload_stable()
        self.round += 1
        record = {
            "round": self.round,
            "time": round(started, 3),
            "seconds": round(time.time() - started, 2),
            "stable_version": self.stable_version,
            "updates": self.updates,
            "reward_model_trained": reward_model,
            "steps": steps,
            "decision": decision.as_dict() if decision else None,
            "live_prompts": len(self.prompts),
            "preference_pairs": len(self.book.pairs),
            "quality": [s.as_dict() for s in self.quality.table()],
        }
        self.save_checkpoint()  # before the record: a round in rounds.jsonl is always in a checkpoint
        with open(self.out / "rounds.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        log.info(
            "round %d: stable version %d, %s in %.1f s",
            self.round,
            self.stable_version,
            f"{decision.action} {decision.candidate_version}" if decision else "no update",
            record["seconds"],
        )
        return record

    def run(self, stop: threading.Event | None = None) -> dict:
        """Rounds until stopped, duration_s or max_rounds; returns a summary."""
        c = self.config
        stop = stop or threading.Event()
        deadline = time.monotonic() + c.duration_s if c.duration_s > 0 else None
        started, rounds = time.time(), []
        self.sync_replicas()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline) and not self.rollout.halted:
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
            "rounds": len(rounds),
            "last_round": self.round,
            "stable_version": self.stable_version,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "rl_halted": self.rollout.halted,  # non-empty: the reward-hacking guard stopped RL, and why
            "decisions": [r["decision"] for r in rounds if r["decision"]],
            "reward_models": [r["reward_model_trained"] for r in rounds if r["reward_model_trained"]],
            "quality": [s.as_dict() for s in self.quality.table()],
            "wall_s": round(time.time() - started, 1),
        }

    # ---- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        state = {
            "round": self.round,
            "updates": self.updates,
            "stable_version": self.stable_version,
            "base_model": self.model_dir,
            "config": asdict(self.config),
            "update": self.update.state_dict(),  # the KL controller and the reward normalizer
        }
        pools = {
            "prompts": self.prompts.state_dict(),
            "preferences": self.book.state_dict(),
            "quality": self.quality.state_dict(),
            "reward_model": self.refresher.state_dict(),
            "judgements": self.rollout.judgements.state_dict(),
        }

        def contents(directory: Path) -> None:
            self.learner.save(directory)
            (directory / STATE_FILE).write_text(json.dumps(pools))

        path = checkpoint.write_checkpoint(self.out, self.round, contents, state)
        checkpoint.prune_checkpoints(self.out, self.config.keep_checkpoints)
        return path

    def _restore(self, path: Path) -> None:
        state = checkpoint.read_state(path)
        pools = json.loads((path / STATE_FILE).read_text())
        self._load_trainer(path, state)
        self.round, self.updates, self.stable_version = (
            int(state["round"]),
            int(state["updates"]),
            int(state["stable_version"]),
        )
        self.prompts.load_state_dict(pools["prompts"])
        self.book.load_state_dict(pools["preferences"])
        self.quality.load_state_dict(pools["quality"])
        self.refresher.load_state_dict(pools["reward_model"])
        if "judgements" in pools:  # checkpoints from before the paired canary have none
            self.rollout.judgements.load_state_dict(pools["judgements"])
        checkpoint.load_rng(path)
        self.resumed_from = path
        log.info(
            "resumed from %s: round %d, stable version %d, %d live prompts, %d preference pairs",
            path,
            self.round,
            self.stable_version,
            len(self.prompts),
            len(self.book.pairs),
        )

    def _reload_stable(self) -> None:
        """After a rollback the trainer, too, goes back to the stable weights (those of its last checkpoint)."""
        latest = checkpoint.latest_checkpoint(self.out)
        assert latest is not None  # one is written at round 0
        self._load_trainer(latest, checkpoint.read_state(latest))

    def _load_trainer(self, path: Path, state: dict) -> None:
        self.learner.load(path)
        if "update" in state:  # checkpoints from before the shared trainer step have none
            self.update.load_state_dict(state["update"])

    def close(self) -> None:
        for client in (self.stable, self.canary, self.reader, self.scorer):
            client.close()
