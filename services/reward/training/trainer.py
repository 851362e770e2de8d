"""`rlhf-reward train`: trains a reward model from human feedback and writes a servable checkpoint.

A sequence-classification backbone with one scalar head (default: the packaged
all-MiniLM-L6-v2 encoder with a fresh head; any Hugging Face encoder or decoder
checkpoint directory works) reads (prompt, completion) as a text pair, exactly as the
reward service's classifier backend does (`encode_pairs`), and learns r(prompt, completion):

  pairwise  Bradley-Terry: -log sigmoid(r_chosen - r_rejected - margin)
            (+ center_rewards_coefficient * (r_chosen + r_rejected)^2, as TRL does, to keep
            rewards near 0; the score is otherwise only defined up to a constant)
  ranked    Plackett-Luce over the list, best first: the mean over positions i of
            -log softmax(r_i .. r_K)[i] (K = 2 is Bradley-Terry), or Bradley-Terry over all
            pairs of the list (`--ranking-loss all-pairs`)
  ratings   regression: (r - rating)^2

Each step takes a batch of one form. Held-out evaluation reports the pairwise accuracy
over every comparison the held-out feedback implies (each pair; each ordered pair of a
ranking; each pair of ratings of one prompt that differ) and the loss, before training
and after every epoch.

The result is a versioned directory `<output-dir>/v0001/` (then v0002, ...), written
aside and renamed when complete: safetensors weights, tokenizer (its model_max_length
set to the training max_length, so serving truncates the same way) and
`reward_model.json` (what it was trained on, how, the held-out metrics, and `version`,
the content hash the reward service will report). With `--publish-address` it is then
published to a running reward service through RewardAdminService.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from services.clients.reward import publish_checkpoint
from services.common.config import describe, load_config, option
from services.common.model_store import minilm_dir
from services.common.server import setup_logging
from services.reward.backend import checkpoint_version, require_checkpoint_dir
from services.reward.classifier import encode_pairs
from services.reward.training.preferences import Feedback, PairwisePreference, RankedPreference, Rating, load_feedback

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
RANKING_LOSSES = ("plackett-luce", "all-pairs")


@dataclass(frozen=True)
class RewardTrainingConfig:
    """Train a reward model (Bradley-Terry / Plackett-Luce / regression) and write a servable checkpoint."""

    train_files: tuple[str, ...] = option(
        ("data/preferences.jsonl",), "Comma-separated JSONL feedback files (pairwise, ranked and/or ratings)."
    )
    heldout_files: tuple[str, ...] = option(
        ("data/preferences_heldout.jsonl",),
        "Comma-separated held-out JSONL files; empty = hold out heldout_fraction of the training records.",
    )
    heldout_fraction: float = option(0.1, "Share of training records held out when no heldout_files are given.")
    base_model: str = option(
        "", "Backbone checkpoint directory (safetensors); empty = the packaged all-MiniLM-L6-v2 with a fresh head."
    )
    output_dir: str = option("runs/reward-model", "Where the versioned checkpoint directories go (v0001, v0002, ...).")
    epochs: int = option(3, "Passes over the training records.")
    max_steps: int = option(0, "Stop after this many optimizer steps (0 = run all epochs).")
    batch_size: int = option(16, "Feedback records per step (a pair is 2 texts, a ranking K, a rating 1).")
    learning_rate: float = option(1e-4, "AdamW peak learning rate (linear warm-up, then linear decay to 0).")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    warmup_ratio: float = option(0.1, "Share of steps spent warming the learning rate up.")
    max_grad_norm: float = option(1.0, "Gradient-norm clip.")
    max_length: int = option(256, "Tokens per (prompt, completion) pair; longer pairs are truncated longest-first.")
    center_rewards_coefficient: float = option(
        0.0, "Weight of (r_chosen + r_rejected)^2 on pairwise batches (TRL suggests 0.01); 0 = off."
    )
    ranking_loss: str = option("plackett-luce", "Loss on ranked lists: plackett-luce or all-pairs.")
    eval_batch_size: int = option(64, "Texts per forward pass during evaluation.")
    seed: int = option(0, "Seed for initialisation of the head, batching and dropout.")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:N.")
    threads: int = option(0, "torch intra-op threads (0 = torch's default).")
    progress: bool = option(True, "Show a progress bar.")
    publish_address: str = option(
        "", "After training, publish the checkpoint to the reward service at this host:port (RewardAdminService)."
    )
    publish_model: str = option("", "Model name to publish as (PublishVersion, or LoadModel when it is new).")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        if not self.train_files:
            raise ValueError("train_files is empty")
        if self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(f"ranking_loss must be one of {list(RANKING_LOSSES)}, got {self.ranking_loss!r}")
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.learning_rate <= 0 or self.center_rewards_coefficient < 0 or self.max_steps < 0:
            raise ValueError("learning_rate must be > 0, center_rewards_coefficient and max_steps >= 0")
        if bool(self.publish_address) != bool(self.publish_model):
            raise ValueError("publish_address and publish_model go together")


# ---- the objectives ---------------------------------------------------------------------


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Per pair: -log sigmoid(r_chosen - r_rejected - margin)."""
    return -F.logsigmoid(chosen - rejected - margin)


def plackett_luce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Scores of one ranked list, best first: mean over positions of -log P(item i is best of items i..K)."""
    terms = [torch.logsumexp(scores[i:], dim=0) - scores[i] for i in range(scores.shape[0] - 1)]
    return torch.stack(terms).mean()


def all_pairs_loss(scores: torch.Tensor) -> torch.Tensor:
    """Scores of one ranked list, best first: mean Bradley-Terry loss over every ordered pair."""
    upper = torch.triu_indices(scores.shape[0], scores.shape[0], offset=1)
    return bradley_terry_loss(scores[upper[0]], scores[upper[1]]).mean()


def texts_of(record: Feedback) -> list[str]:
    """The completions a record needs scored, in a fixed order."""
    if isinstance(record, PairwisePreference):
        return [record.chosen, record.rejected]
    if isinstance(record, RankedPreference):
        return list(record.ranking)
    return [record.completion]


def record_losses(
    records: Sequence[Feedback], scores: Sequence[torch.Tensor], config: RewardTrainingConfig
) -> torch.Tensor:
    """One loss per record, from its texts' scores (as `texts_of` orders them)."""
    losses = []
    for record, s in zip(records, scores, strict=True):
        if isinstance(record, PairwisePreference):
            loss = bradley_terry_loss(s[0], s[1], record.margin)
            if config.center_rewards_coefficient:
                loss = loss + config.center_rewards_coefficient * (s[0] + s[1]) ** 2
        elif isinstance(record, RankedPreference):
            loss = plackett_luce_loss(s) if config.ranking_loss == "plackett-luce" else all_pairs_loss(s)
        else:
            loss = (s[0] - record.rating) ** 2
        losses.append(loss)
    return torch.stack(losses)


def comparisons(records: Sequence[Feedback]) -> list[tuple[str, str, str]]:
    """Every (prompt, better, worse) the feedback implies, for pairwise accuracy."""
    pairs: list[tuple[str, str, str]] = []
    ratings: dict[str, list[Rating]] = {}
    for record in records:
        if isinstance(record, PairwisePreference):
            pairs.append((record.prompt, record.chosen, record.rejected))
        elif isinstance(record, RankedPreference):
            ranking = record.ranking
            k = len(ranking)
            pairs += [(record.prompt, ranking[i], ranking[j]) for i in range(k) for j in range(i + 1, k)]
        else:
            ratings.setdefault(record.prompt, []).append(record)
    for prompt, rated in ratings.items():
        for i, a in enumerate(rated):
            for b in rated[i + 1 :]:
                if a.rating != b.rating:
                    better, worse = (a, b) if a.rating > b.rating else (b, a)
                    pairs.append((prompt, better.completion, worse.completion))
    return pairs


# ---- the model ----------------------------------------------------------------------------


def load_backbone(path: Path, device: torch.device):
    """Tokenizer and a num_labels=1 sequence classifier; a head the checkpoint lacks starts fresh (and is logged)."""
    require_checkpoint_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=1,
        local_files_only=True,
        use_safetensors=True,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
    )
    fresh = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if fresh:
        log.info("initialised fresh (not in %s): %s", path.name, fresh)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: tokenizer has neither a pad nor an eos token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to(device)


class RewardModelTrainer:
    """Holds the model and data; `run()` trains, evaluates and writes the checkpoint."""

    def __init__(self, config: RewardTrainingConfig) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.device = torch.device(config.device)
        self.base = Path(config.base_model) if config.base_model else minilm_dir()
        self.train_records = [r for path in config.train_files for r in load_feedback(path)]
        if config.heldout_files:
            self.heldout_records = [r for path in config.heldout_files for r in load_feedback(path)]
        else:
            shuffled = list(self.train_records)
            random.Random(config.seed).shuffle(shuffled)
            cut = max(1, int(len(shuffled) * config.heldout_fraction))
            self.heldout_records, self.train_records = shuffled[:cut], shuffled[cut:]
        self.tokenizer, self.model = load_backbone(self.base, self.device)
        self._encode = encode_pairs

    # -- scoring --

    def _scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        encoded = self._encode(self.tokenizer, prompts, completions, self.config.max_length).to(self.device)
        return self.model(**encoded).logits[:, 0].float()

    def _batch_scores(self, records: Sequence[Feedback]) -> list[torch.Tensor]:
        prompts, completions, sizes = [], [], []
        for record in records:
            texts = texts_of(record)
            prompts += [record.prompt] * len(texts)
            completions += texts
            sizes.append(len(texts))
        return list(torch.split(self._scores(prompts, completions), sizes))

    @torch.inference_mode()
    def score_texts(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]:
        was_training = self.model.training
        self.model.eval()
        unique = list(dict.fromkeys(pairs))
        scores: dict[tuple[str, str], float] = {}
        for start in range(0, len(unique), self.config.eval_batch_size):
            chunk = unique[start : start + self.config.eval_batch_size]
            values = self._scores([p for p, _ in chunk], [c for _, c in chunk]).cpu().tolist()
            scores.update(zip(chunk, values, strict=True))
        self.model.train(was_training)
        return scores

    def evaluate(self, records: Sequence[Feedback]) -> dict[str, Any]:
        """Pairwise accuracy over the implied comparisons, mean record loss, score mean/std."""
        needed = [(r.prompt, t) for r in records for t in texts_of(r)]
        scores = self.score_texts(needed)
        implied = comparisons(records)
        correct = sum(scores[(p, better)] > scores[(p, worse)] for p, better, worse in implied)
        per_record = [torch.tensor([scores[(r.prompt, t)] for t in texts_of(r)]) for r in records]
        loss = record_losses(records, per_record, self.config).mean().item()
        values = torch.tensor(list(scores.values()))
        return {
            "pairwise_accuracy": correct / len(implied) if implied else None,
            "comparisons": len(implied),
            "loss": loss,
            "records": len(records),
            "score_mean": values.mean().item(),
            "score_std": values.std().item() if len(values) > 1 else 0.0,
        }

    # -- training --

    def _epoch_batches(self, rng: random.Random) -> list[list[Feedback]]:
        """Batches of one feedback form each, in shuffled order."""
        batches: list[list[Feedback]] = []
        for form in (PairwisePreference, RankedPreference, Rating):
            records = [r for r in self.train_records if isinstance(r, form)]
            rng.shuffle(records)
            size = self.config.batch_size
            batches += [records[i : i + size] for i in range(0, len(records), size)]
        rng.shuffle(batches)
        return batches

    def run(self) -> dict[str, Any]:
        config = self.config
        rng = random.Random(config.seed)
        started = time.perf_counter()
        steps_per_epoch = len(self._epoch_batches(random.Random(config.seed)))
        total = steps_per_epoch * config.epochs
        if config.max_steps:
            total = min(total, config.max_steps)
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        warmup = max(1, int(total * config.warmup_ratio))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
        )
        before = self.evaluate(self.heldout_records)
        log.info(
            "train-rm base=%s train_records=%d heldout_records=%d steps=%d heldout_accuracy_before=%s",
            self.base,
            len(self.train_records),
            len(self.heldout_records),
            total,
            _fmt(before["pairwise_accuracy"]),
        )
        history, step, train_loss = [], 0, math.nan
        self.model.train()
        with tqdm(total=total, desc="train-rm", unit="step", disable=not config.progress) as bar:
            for epoch in range(1, config.epochs + 1):
                losses = []
                for batch in self._epoch_batches(rng):
                    if step >= total:
                        break
                    loss = record_losses(batch, self._batch_scores(batch), config).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    losses.append(loss.item())
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
                train_loss = sum(losses) / len(losses) if losses else math.nan
                heldout = self.evaluate(self.heldout_records)
                history.append({"epoch": epoch, "step": step, "train_loss": train_loss, **heldout})
                log.info(
                    "epoch=%d step=%d train_loss=%.4f heldout_loss=%.4f heldout_accuracy=%s",
                    epoch,
                    step,
                    train_loss,
                    heldout["loss"],
                    _fmt(heldout["pairwise_accuracy"]),
                )
                if step >= total:
                    break
        self.model.eval()
        summary = {
            "objective": self._objective(),
            "steps": step,
            "train_loss": train_loss,
            "heldout_before": before,
            "heldout": history[-1] if history else before,
            "history": history,
            "seconds": round(time.perf_counter() - started, 2),
        }
        path = self.save(summary)
        summary.update(path=str(path), version=json.loads((path / METADATA_FILE).read_text())["version"])
        if config.publish_address:
            summary["published"] = publish_checkpoint(config.publish_address, config.publish_model, path)
        return summary

    def _objective(self) -> str:
        forms = {type(r) for r in self.train_records}
        names = {PairwisePreference: "bradley-terry", RankedPreference: self.config.ranking_loss, Rating: "regression"}
        return "+".join(names[f] for f in (PairwisePreference, RankedPreference, Rating) if f in forms)

    # -- output --

    def save(self, summary: dict[str, Any]) -> Path:
        """Writes `<output_dir>/vNNNN/` aside, then renames it into place."""
        root = Path(self.config.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        target = next_version_dir(root)
        staging = root / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging, safe_serialization=True)
        self.tokenizer.model_max_length = self.config.max_length
        self.tokenizer.save_pretrained(staging)
        metadata = {
            "format_version": FORMAT_VERSION,
            "version": checkpoint_version(staging),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": str(self.base),
            "objective": summary["objective"],
            "data": {
                "train": [_file_info(p) for p in self.config.train_files],
                "heldout": [_file_info(p) for p in self.config.heldout_files],
                "train_records": len(self.train_records),
                "heldout_records": len(self.heldout_records),
            },
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()},
            "steps": summary["steps"],
            "train_loss": summary["train_loss"],
            "heldout_before": summary["heldout_before"],
            "heldout": summary["heldout"],
            "input": "tokenizer(prompt, completion) text pair, truncation longest_first; score = logits[:, 0]",
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        staging.rename(target)
        log.info("wrote reward model %s version=%s", target, metadata["version"])
        return target


METADATA_FILE = "reward_model.json"


def next_version_dir(root: Path) -> Path:
    numbers = [int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir()]
    return root / f"v{max(numbers, default=0) + 1:04d}"


def _file_info(path: str) -> dict[str, str]:
    return {"path": path, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str]) -> None:
    """`rlhf-reward train [flags]`: prints the summary as JSON."""
    config = load_config(RewardTrainingConfig, argv, env_prefix="RLHF_RM_", prog="rlhf-reward train")
    setup_logging(config.log_level)
    log.info("train-rm config:\n%s", describe(config))
    summary = RewardModelTrainer(config).run()
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
