"""Semantic-similarity reward: cosine of sentence embeddings (all-MiniLM-L6-v2 by default).

The completion and the reference (the prompt when there is none) are embedded
separately, each as its own sequence, and compared afterwards. Encoding the pair
jointly as one sequence (as the seed article did) lets the two texts attend to each
other, so the pooled vector no longer describes either text and the "similarity"
is not the sentence-embedding cosine the model was trained for.

Embedding follows sentence-transformers' recipe for this model without depending on
it: mean of the token states over the attention mask, then L2 normalisation.

Within a batch, identical texts are embedded once (the samples of one prompt share
their reference, so a GRPO group of n completions costs n + 1 rows, not 2n) and rows
run in groups of similar length (`padding.length_groups`).
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
from services.reward.padding import length_groups
from services.reward.token_lengths import TokenCounter

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
    rows_per_item = 2  # the completion and its reference are separate rows of one padded batch

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
        self._counter = TokenCounter(self.tokenizer, self.max_length)
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

    def token_lengths(self, items: Sequence[RewardItem]) -> list[int]:
        completions = self._counter.single([item.completion for item in items])
        references = self._counter.single([_anchor(item) for item in items])
        return [max(c, r) for c, r in zip(completions, references, strict=True)]

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings, one row per text (run in groups of similar length)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        rows = encoded["input_ids"]
        out = torch.empty(len(rows), self.model.config.hidden_size)
        for group in length_groups([len(ids) for ids in rows]):
            longest = max(len(rows[i]) for i in group)
            input_ids = torch.full((len(group), longest), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for row, index in enumerate(group):
                input_ids[row, : len(rows[index])] = torch.tensor(rows[index])
                mask[row, : len(rows[index])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            out[group] = torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu()
        return out

    def score(self, items: Sequence[RewardItem]) -> list[float]:
        # Rows never see each other, so this equals embedding every text on its own.
        completions = [item.completion for item in items]
        references = [_anchor(item) for item in items]
        unique = list(dict.fromkeys(completions + references))
        position = {text: i for i, text in enumerate(unique)}
        embeddings = self.embed(unique)
        a = embeddings[[position[t] for t in completions]]
        b = embeddings[[position[t] for t in references]]
        return (a * b).sum(dim=-1).tolist()


def _anchor(item: RewardItem) -> str:
    """What the completion is compared with: the reference, or the prompt when there is none."""
    return item.prompt if item.reference is None else item.reference
