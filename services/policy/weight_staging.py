"""What a push must match (the served checkpoint's tensors) and where it waits before loading."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from services.common.weight_stream import StagedPush, TensorSpec


def read_manifest(model_dir: str) -> dict[str, TensorSpec]:
    """Names and shapes of every tensor in the checkpoint the server started from."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    manifest: dict[str, TensorSpec] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                manifest[name] = TensorSpec(tuple(handle.get_slice(name).get_shape()))
    return manifest


def staging_dir(configured: str) -> Path:
    if configured:
        path = Path(configured)
    elif Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        path = Path("/dev/shm") / f"rlhf-policy-{os.getpid()}"
    else:
        path = Path(tempfile.gettempdir()) / f"rlhf-policy-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_staged(push: StagedPush, directory: Path) -> Path:
    """Writes the verified tensors as one safetensors file the engine workers read."""
    path = directory / f"push-{uuid.uuid4().hex}.safetensors"
    save_file(push.tensors, str(path))
    return path
