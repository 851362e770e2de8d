"""The online reward model's warm start: trained once on shipped preference data, before any live feedback.

A reward model trained from scratch on the first few dozen live pairs is near chance,
and RL on it drifts. Starting from one already trained on the project's preference
files (`data/preferences.jsonl`: reviews that name and discuss the book preferred to
generic ones) gives the loop a useful model from round one; live pairs then refine
it (`RewardRefresher` continues from it). The checkpoint is cached under a key of the
files' contents and the training settings, so a later run reuses it ("a previous run").
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from services.reward.training.trainer import RewardModelTrainer, RewardTrainingConfig

log = logging.getLogger(__name__)

DONE = "warm-start.json"


def warm_start(
    files: tuple[str, ...],
    heldout_files: tuple[str, ...],
    cache: Path,
    epochs: int = 2,
    max_length: int = 128,
    seed: int = 0,
) -> dict:
    """The warm-start checkpoint for these files, trained now or found in `cache`; returns its path and accuracy."""
    key = hashlib.sha256()
    for name in (*files, "|", *heldout_files):
        key.update(name.encode() + (Path(name).read_bytes() if name != "|" else b""))
    key.update(json.dumps({"epochs": epochs, "max_length": max_length, "seed": seed}).encode())
    directory = cache / f"online-rm-warm-{key.hexdigest()[:16]}"
    done = directory / DONE
    if done.is_file():
        result = json.loads(done.read_text())
        if Path(result["path"]).is_dir():
            log.info("warm-start reward model from the cache: %s", result["path"])
            return {**result, "cached": True}
    config = RewardTrainingConfig(
        train_files=files,
        heldout_files=heldout_files,
        output_dir=str(directory),
        epochs=epochs,
        max_length=max_length,
        seed=seed,
        progress=False,
    )
    summary = RewardModelTrainer(config).run()
    result = {
        "path": summary["path"],
        "files": list(files),
        "seconds": summary["seconds"],
        "heldout_accuracy": summary["heldout"]["pairwise_accuracy"],
        "heldout_accuracy_before": summary["heldout_before"]["pairwise_accuracy"],
    }
    done.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "warm-start reward model trained on %s in %.0f s: held-out accuracy %s -> %s",
        ", ".join(files),
        summary["seconds"],
        result["heldout_accuracy_before"],
        result["heldout_accuracy"],
    )
    return {**result, "cached": False}
