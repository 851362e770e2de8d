"""Keeping the reward model current: denoised live preferences in, a hot-swapped model out.

`PreferenceBook` gathers the store's denoised pairs (ListPreferences: duplicates
collapsed, unreliable raters down-weighted, contradictions resolved), keyed by pair
id so a pair that later votes change replaces itself. `RewardRefresher` fine-tunes
the latest reward model (Bradley-Terry, `services/reward/training/trainer.py`) on the
pairs that are new since the last training plus a replay of older ones, writes a
versioned checkpoint, and publishes it to the reward service through
RewardAdminService; the reward service then scores with it without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc

from rlhf.v1 import feedback_pb2
from services.clients.reward import publish_checkpoint
from services.reward.training.trainer import RewardModelTrainer, RewardTrainingConfig

log = logging.getLogger(__name__)


class PreferenceBook:
    """The denoised pairs to train on; with `heldout_share` > 0 a fixed share of pairs (by a hash of the pair id, so
    a pair never switches sides) is kept apart in `heldout` for judging the reward model on pairs it never saw."""

    def __init__(self, min_agreement: float = 0.6, capacity: int = 20000, heldout_share: float = 0.0) -> None:
        if not 0.0 <= heldout_share < 1.0:
            raise ValueError(f"heldout_share must be in [0, 1), got {heldout_share}")
        self.min_agreement, self.capacity, self.heldout_share = min_agreement, capacity, heldout_share
        self.cursor = 0
        self.pairs: OrderedDict[str, dict] = OrderedDict()  # pair id -> {prompt, chosen, rejected, weight}
        self.fresh: set[str] = set()  # changed since the last training
        self.heldout: OrderedDict[str, dict] = OrderedDict()  # pair id -> pair, never trained on

    def _held_out(self, pair_id: str) -> bool:
        digest = hashlib.sha256(pair_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.heldout_share

    def ingest(self, reply: feedback_pb2.ListPreferencesResponse) -> None:
        for pair in reply.pairs:
            if pair.agreement < self.min_agreement or not pair.prompt_text:
                if self.pairs.pop(pair.pair_id, None) is not None:  # later votes made it doubtful
                    self.fresh.discard(pair.pair_id)
                self.heldout.pop(pair.pair_id, None)
                continue
            if self._held_out(pair.pair_id):
                self.heldout.pop(pair.pair_id, None)
                self.heldout[pair.pair_id] = {
                    "prompt": pair.prompt_text,
                    "chosen": pair.chosen_text,
                    "rejected": pair.rejected_text,
                    "weight": round(pair.weight, 4),
                }
                while len(self.heldout) > self.capacity:
                    self.heldout.popitem(last=False)
                continue
            self.pairs.pop(pair.pair_id, None)
            self.pairs[pair.pair_id] = {
                "prompt": pair.prompt_text,
                "chosen": pair.chosen_text,
                "rejected": pair.rejected_text,
                "weight": round(pair.weight, 4),
            }
            self.fresh.add(pair.pair_id)
        while len(self.pairs) > self.capacity:
            evicted, _ = self.pairs.popitem(last=False)
            self.fresh.discard(evicted)
        self.cursor = max(self.cursor, int(reply.next_cursor))

    def refresh(self, reader) -> None:
        for page in reader.preferences(self.cursor):
            self.ingest(page)

    def training_set(self, replay: int, rng: random.Random, max_fresh: int = 0) -> list[dict]:
        """The fresh pairs (the newest `max_fresh` when > 0) plus up to `replay` older ones."""
        fresh = [self.pairs[i] for i in self.pairs if i in self.fresh]
        if max_fresh > 0:
            fresh = fresh[-max_fresh:]  # the rest become older pairs, replayed later
        older = [p for i, p in self.pairs.items() if i not in self.fresh]
        return fresh + rng.sample(older, min(replay, len(older)))

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "pairs": [[k, v] for k, v in self.pairs.items()],
            "fresh": sorted(self.fresh),
            "heldout": [[k, v] for k, v in self.heldout.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
        self.pairs = OrderedDict((k, v) for k, v in state["pairs"])
        self.fresh = set(state["fresh"]) & set(self.pairs)
        self.heldout = OrderedDict((k, v) for k, v in state.get("heldout", []))


@dataclass(frozen=True)
class RefreshSettings:
    reward_address: str
    model_name: str
    base_model: str  # "" = packaged MiniLM
    output_dir: Path
    min_new_pairs: int = 16
    replay_pairs: int = 256
    max_fresh_pairs: int = 0  # 0: every fresh pair; > 0: the newest this many (bounds a retraining's time)
    epochs: int = 2
    learning_rate: float = 3e-5
    batch_size: int = 16
    max_length: int = 256
    threads: int = 0
    seed: int = 0


class RewardRefresher:
    def __init__(self, settings: RefreshSettings) -> None:
        self.settings = settings
        self.latest_path = ""  # newest checkpoint trained here; the next training starts from it
        self.trainings = 0

    def due(self, book: PreferenceBook) -> bool:
        return len(book.fresh) >= self.settings.min_new_pairs

    def retrain(self, book: PreferenceBook, rng: random.Random) -> dict:
        """Trains on fresh + replayed pairs, publishes; returns what happened (for the round record)."""
        s = self.settings
        records = book.training_set(s.replay_pairs, rng, s.max_fresh_pairs)
        data = s.output_dir / "data" / f"pairs-{self.trainings + 1:04d}.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text(
            "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in records)
        )
        config = RewardTrainingConfig(
            train_files=(str(data),),
            heldout_files=(),
            heldout_fraction=0.15,
            base_model=self.latest_path or s.base_model,
            output_dir=str(s.output_dir),
            epochs=s.epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            max_length=s.max_length,
            threads=s.threads,
            seed=s.seed + self.trainings,
            progress=False,
        )
        summary = RewardModelTrainer(config).run()
        fresh = len(book.fresh)
        book.fresh.clear()
        self.latest_path = summary["path"]
        self.trainings += 1
        result = {
            "path": summary["path"],
            "version": summary["version"],
            "pairs": len(records),
            "fresh_pairs": fresh,
            "heldout_accuracy_before": summary["heldout_before"]["pairwise_accuracy"],
            "heldout_accuracy": summary["heldout"]["pairwise_accuracy"],
            "published": False,
        }
        try:
            publish_checkpoint(s.reward_address, s.model_name, Path(summary["path"]))
            result["published"] = True
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.warning(
                "the reward service at %s has no RewardAdminService: %s trained but not hot-swapped",
                s.reward_address,
                summary["path"],
            )
        log.info(
            "reward model %s: %d pairs (%d fresh), held-out accuracy %s -> %s, published=%s",
            result["version"],
            len(records),
            fresh,
            result["heldout_accuracy_before"],
            result["heldout_accuracy"],
            result["published"],
        )
        return result

    def state_dict(self) -> dict:
        return {"latest_path": self.latest_path, "trainings": self.trainings}

    def load_state_dict(self, state: dict) -> None:
        self.latest_path, self.trainings = state["latest_path"], int(state["trainings"])
