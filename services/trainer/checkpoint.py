"""Checkpoints that resume exactly and survive a crash at any instant.

`<output_dir>/checkpoints/step-NNNNNN/` holds the learner's state (policy or LoRA
adapter, critic, optimizers, schedulers; see Learner.save), the tokenizer, the RNG
states (python, numpy, torch) and trainer_state.json: step, weight version, data
position, KL controller and reward-normalizer state.

A checkpoint is written into a new `*.partial` directory, every file and the
directory are fsynced, the directory is renamed to its final name (the parent
fsynced too), and only then does `checkpoints/latest` (a one-line file naming it)
switch, by an atomic rename of a fsynced temporary file. The checkpoint `latest`
named before is never touched until the new one is durable: a crash at any point
leaves `latest` naming a complete checkpoint. Saving a step that already has a
checkpoint writes a fresh `step-NNNNNN.<id>` beside it and removes the old one after
the switch. `--resume latest` reads the pointer; if it is missing or names a
directory that is gone (removed by hand), the newest complete checkpoint is used.
`metrics.jsonl` gets one fsynced line per step (`append_metrics`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.json"
LATEST = "latest"
_COMPLETE_NAME = re.compile(r"step-(\d{6,})(?:\.[0-9a-f]+)?")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    """Where a step's checkpoint is written first (a re-save of the step gets a `.<id>` suffix)."""
    return output_dir / "checkpoints" / f"step-{step:06d}"


def _step_of(path: Path) -> int | None:
    match = _COMPLETE_NAME.fullmatch(path.name)
    return int(match.group(1)) if match and path.is_dir() and (path / STATE_FILE).is_file() else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Every complete checkpoint directory, oldest step first (a step's newest write last)."""
    root = output_dir / "checkpoints"
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        step = _step_of(path)
        if step is not None:
            found.append((step, path.stat().st_mtime_ns, path))
    return [p for _, _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint `checkpoints/latest` names; the newest complete one if the pointer is missing or stale."""
    root = output_dir / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named.parent == root and _step_of(named) is not None:
            return named
        log.warning("%s names %s, which is not a complete checkpoint: using the newest complete one", pointer, named)
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def resolve_resume(resume: str, output_dir: Path) -> Path:
    """'latest' -> the checkpoint `checkpoints/latest` names (see latest_checkpoint); otherwise the given directory."""
    path = latest_checkpoint(output_dir) if resume == "latest" else Path(resume)
    if path is None:
        raise FileNotFoundError(f"--resume latest: no complete checkpoint under {output_dir / 'checkpoints'}")
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: {path} is not a trainer checkpoint (no {STATE_FILE})")
    return path


def save_rng(directory: Path) -> None:
    """Python, numpy and torch generator states, as plain JSON numbers."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    (directory / RNG_FILE).write_text(json.dumps(state))


def load_rng(directory: Path) -> None:
    state = json.loads((directory / RNG_FILE).read_text())
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """Every file under `directory`, then every directory bottom-up (so their entries are durable too)."""
    for parent, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            _fsync_path(Path(parent) / name)
        _fsync_path(Path(parent))


def _write_durably(path: Path, text: str) -> None:
    """Replaces `path` with `text` atomically: a fsynced temporary file renamed over it, the parent fsynced."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_path(path.parent)


def write_checkpoint(output_dir: Path, step: int, save_contents, trainer_state: dict) -> Path:
    """Calls save_contents(new_dir), adds RNG and trainer state, makes it durable, then points `latest` at it."""
    root = output_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.partial"):  # left by a crash mid-write (one writer per output_dir)
        shutil.rmtree(stale, ignore_errors=True)
    target = checkpoint_dir(output_dir, step)
    write_id = uuid.uuid4().hex[:8]
    staging = root / f"{target.name}.{write_id}.partial"
    staging.mkdir()
    save_contents(staging)
    save_rng(staging)
    (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    _fsync_tree(staging)
    replaced = [p for p in complete_checkpoints(output_dir) if _step_of(p) == step]
    final = target if not target.exists() else root / f"{target.name}.{write_id}"
    os.rename(staging, final)
    _fsync_path(root)
    _write_durably(root / LATEST, final.name + "\n")
    for old in replaced:  # only once `latest` names the new one
        shutil.rmtree(old, ignore_errors=True)
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Removes all but the `keep` newest complete checkpoints, never the one `latest` names."""
    latest = latest_checkpoint(output_dir)
    for old in complete_checkpoints(output_dir)[: -max(keep, 1)]:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def append_metrics(path: Path, record: dict) -> None:
    """Appends one JSON line and fsyncs it, so a crash loses at most the step being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keeps the lines of steps <= last_step (a resumed run redoes the rest); atomic, so no line is lost."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        _write_durably(path, "".join(line + "\n" for line in kept))


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE_FILE).read_text())
