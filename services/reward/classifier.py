"""Classifier reward: a Hugging Face sequence-classification checkpoint with one scalar head.

The usual shape of a trained reward model (e.g. an RM head on a BERT or Llama trunk).
The prompt and completion go in as a text pair, the score is the raw logit. Checkpoints
with more than one label, or whose score head is missing from the weights (which
transformers would silently fill with random values), are refused at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from services.reward.backend import RewardItem, checkpoint_version, require_checkpoint_dir

log = logging.getLogger(__name__)


class ClassifierReward:
    """Raw scalar logit of a sequence classifier on (prompt, completion)."""

    kind = "classifier"
    uses_reference = False

    def __init__(self, name: str, path: Path, device: str = "cpu", description: str | None = None) -> None:
        self.path = Path(path)
        require_checkpoint_dir(self.path)
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        if config.num_labels != 1:
            raise ValueError(
                f"{self.path}: num_labels={config.num_labels}; a reward classifier needs exactly one "
                "scalar head (num_labels=1)"
            )
        self.name = name
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model, info = AutoModelForSequenceClassification.from_pretrained(
            self.path, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
        if info["missing_keys"]:
            raise ValueError(
                f"{self.path}: weights missing from the checkpoint would be random: {sorted(info['missing_keys'])}"
            )
        if self.tokenizer.pad_token is None:
            # Decoder reward models often ship without a pad token; batching needs one.
            if self.tokenizer.eos_token is None:
                raise ValueError(f"{self.path}: tokenizer has neither a pad nor an eos token; cannot batch")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.max_length = min(int(self.tokenizer.model_max_length), _position_limit(self.model.config))
        self.version = checkpoint_version(self.path)
        self.description = (
            description or f"Raw logit of the reward classifier {self.path.name} on (prompt, completion)."
        )
        log.info("loaded classifier model name=%s path=%s version=%s", name, self.path, self.version)

    @torch.inference_mode()
    def score(self, items: Sequence[RewardItem]) -> list[float]:
        encoded = self.tokenizer(
            [item.prompt for item in items],
            [item.completion for item in items],
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**encoded).logits
        return logits[:, 0].float().cpu().tolist()


def _position_limit(config) -> int:
    """Longest sequence the model's positions allow (a large default for position-free models)."""
    return int(getattr(config, "max_position_embeddings", None) or 1 << 20)
