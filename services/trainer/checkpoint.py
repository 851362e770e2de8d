"""Checkpoints that resume exactly: written aside, renamed into place when complete.

`<output_dir>/checkpoints/step-NNNNNN/` holds the learner's state (policy or LoRA
adapter, critic, optimizers, schedulers; see Learner.save), the tokenizer, the RNG
states (python, numpy, torch) and trainer_state.json: step, weight version, data
position, KL controller and reward-normalizer state. A directory without the
`.partial` suffix is always complete, so "latest" is simply the highest step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.json"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")) if root.is_dir() else []
    return done[-1] if done else None


def resolve_resume(resume: str, output_dir: Path) -> Path:
    """'latest' -> newest complete checkpoint of output_dir; otherwise the given directory."""
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


def write_checkpoint(output_dir: Path, step: int, save_contents, trainer_state: dict) -> Path:
    """Calls save_contents(staging_dir), adds RNG and trainer state, then renames into place."""
    target = checkpoint_dir(output_dir, step)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_contents(staging)
    save_rng(staging)
    (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE_FILE).read_text())
