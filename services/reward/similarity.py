"""Semantic-similarity reward: cosine of sentence embeddings (all-MiniLM-L6-v2 by default).

The completion and the reference (the prompt when there is none) are embedded
separately, each as its own sequence, and compared afterwards. Encoding the pair
jointly as one sequence (as the seed article did) lets the two texts attend to each
other, so the pooled vector no longer describes either text and the "similarity"
is not the sentence-embedding cosine the model was trained for.

Embedding follows sentence-transformers' recipe for this model without depending on
it: mean of the token states over the attention mask, then L2 normalisation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from services.common.model_store import minilm_dir
from services.reward.backend import RewardItem, checkpoint_version, require_checkpoint_dir

log = logging.getLogger(__name__)


def _max_length(path: Path, tokenizer, model) -> int:
    """The sequence length the encoder was trained for: sentence-transformers' setting if present.

    all-MiniLM-L6-v2 declares 256 in sentence_bert_config.json although its position
    table holds 512; longer inputs were never seen in training.
    """
    limit = int(model.config.max_position_embeddings)
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        limit = min(limit, int(json.loads(st_config.read_text())["max_seq_length"]))
    return min(limit, int(tokenizer.model_max_length))


class SimilarityReward:
    """Cosine similarity in [-1, 1] between completion and reference embeddings."""

    kind = "similarity"
    uses_reference = True

    def __init__(
        self, name: str, path: Path | None = None, device: str = "cpu", description: str | None = None
    ) -> None:
        self.path = Path(path) if path else minilm_dir()
        require_checkpoint_dir(self.path)
        self.name = name
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True)
        self.model.to(self.device).eval()
        self.max_length = _max_length(self.path, self.tokenizer, self.model)
        self.version = checkpoint_version(self.path)
        self.description = description or (
            f"Cosine similarity in [-1, 1] of {self.path.name} sentence embeddings of the completion and the "
            "reference (the prompt when no reference is given); each text embedded on its own."
        )
        log.info(
            "loaded similarity model name=%s path=%s version=%s max_length=%d",
            name,
            self.path,
            self.version,
            self.max_length,
        )

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings, one row per text."""
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        states = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def score(self, items: Sequence[RewardItem]) -> list[float]:
        # One forward pass over 2n independent sequences: rows never see each other,
        # so this equals embedding every text on its own.
        references = [item.prompt if item.reference is None else item.reference for item in items]
        embeddings = self.embed([item.completion for item in items] + references)
        completions, anchors = embeddings[: len(items)], embeddings[len(items) :]
        return (completions * anchors).sum(dim=-1).float().cpu().tolist()
