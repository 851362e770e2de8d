"""What every reward backend is: the item it scores, its interface, and its version hash.

Backends are plain synchronous classes so they can be tested without gRPC or asyncio;
the batcher runs their `score` in a worker thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KINDS = ("similarity", "classifier", "rules")
VERSION_CHARS = 12

# Files that change a checkpoint's scores besides its weights: the architecture and the
# tokenizer. Including them means a re-tokenized model gets a new version too.
_CHECKPOINT_SIDE_FILES = (
    "config.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


@dataclass(frozen=True)
class RewardItem:
    """One prompt/completion pair; `reference` is None when the caller sent none."""

    prompt: str
    completion: str
    reference: str | None = None


class RewardBackend(Protocol):
    """A hosted reward model. `score` returns one float per item, in order."""

    name: str
    version: str
    kind: str
    description: str
    uses_reference: bool

    def score(self, items: Sequence[RewardItem]) -> list[float]: ...


class TokenizedBackend(RewardBackend, Protocol):
    """A backend whose cost grows with padded tokens, so batches can be limited by a token budget.

    A batch of n items costs `n * rows_per_item * longest` padded positions, where
    `longest` is the largest `token_lengths` value in the batch.
    """

    rows_per_item: int

    def token_lengths(self, items: Sequence[RewardItem]) -> list[int]: ...


def digest_version(chunks: Iterable[bytes]) -> str:
    """First VERSION_CHARS hex digits of the sha256 of the concatenated chunks."""
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()[:VERSION_CHARS]


def checkpoint_files(path: Path) -> list[Path]:
    """The files of a checkpoint directory that determine its scores, in a stable order."""
    weights = sorted(path.glob("*.safetensors"))
    side = [path / name for name in _CHECKPOINT_SIDE_FILES if (path / name).is_file()]
    return sorted({*weights, *side})


def checkpoint_version(path: Path) -> str:
    """Content hash of a checkpoint: each relevant file's name and bytes, streamed."""

    def chunks() -> Iterable[bytes]:
        for file in checkpoint_files(path):
            yield file.name.encode() + b"\0"
            with open(file, "rb") as handle:
                while block := handle.read(1 << 20):
                    yield block

    return digest_version(chunks())


def require_checkpoint_dir(path: Path) -> None:
    """Fails with a clear message unless `path` is a safetensors checkpoint directory.

    Only safetensors weights are accepted: `.bin` files are pickles, and unpickling
    can execute code from whoever wrote the checkpoint.
    """
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; expected a Hugging Face checkpoint directory")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path} has no *.safetensors weights (pickled .bin weights are not loaded)")


def check_device(device: str) -> None:
    """Stops start-up when the configured device is unusable, instead of silently using the CPU."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available on this machine")
