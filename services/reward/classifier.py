"""Classifier reward: a Hugging Face sequence-classification checkpoint with one scalar head.

The usual shape of a trained reward model (e.g. an RM head on a BERT or Llama trunk,
such as `rlhf-reward train` writes). The prompt and completion go in
as a text pair (`encode_pairs`, which training uses too), the score is the raw logit.
A `reward_model.json` written by train-rm supplies the default description. Checkpoints
with more than one label, or whose score head is missing from the weights (which
transformers would silently fill with random values), are refused at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from services.reward.backend import RewardItem, checkpoint_version, require_checkpoint_dir
from services.reward.padding import length_groups
from services.reward.token_lengths import TokenCounter

log = logging.getLogger(__name__)

METADATA_FILE = "reward_model.json"


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int):
    """The model input for (prompt, completion) pairs; one function so training and serving agree."""
    return tokenizer(
        list(prompts),
        list(completions),
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )


class ClassifierReward:
    """Raw scalar logit of a sequence classifier on (prompt, completion)."""

    kind = "classifier"
    uses_reference = False
    rows_per_item = 1

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
        self.description = description or _describe(self.path)
        self._counter = TokenCounter(self.tokenizer, self.max_length)
        log.info("loaded classifier model name=%s path=%s version=%s", name, self.path, self.version)

    def token_lengths(self, items: Sequence[RewardItem]) -> list[int]:
        return self._counter.pairs([item.prompt for item in items], [item.completion for item in items])

    @torch.inference_mode()
    def score(self, items: Sequence[RewardItem]) -> list[float]:
        """Identical pairs are scored once; rows run in groups of similar length (same logits as one batch)."""
        pairs = list(dict.fromkeys((item.prompt, item.completion) for item in items))
        encoded = self.tokenizer(
            [p for p, _ in pairs], [c for _, c in pairs], truncation="longest_first", max_length=self.max_length
        )
        values = torch.empty(len(pairs))
        for group in length_groups([len(ids) for ids in encoded["input_ids"]]):
            features = {key: [encoded[key][i] for i in group] for key in encoded.keys()}
            batch = self.tokenizer.pad(features, padding=True, return_tensors="pt").to(self.device)
            values[group] = self.model(**batch).logits[:, 0].float().cpu()
        position = {pair: i for i, pair in enumerate(pairs)}
        return [float(values[position[(item.prompt, item.completion)]]) for item in items]


def _describe(path: Path) -> str:
    """From train-rm's metadata when present: what it was trained on and how well it did."""
    default = f"Raw logit of the reward classifier {path.name} on (prompt, completion)."
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return default
    accuracy = (metadata.get("heldout") or {}).get("pairwise_accuracy")
    trained = f"trained by train-rm ({metadata.get('objective', 'preferences')})"
    if isinstance(accuracy, (int, float)):
        trained += f", held-out pairwise accuracy {accuracy:.3f}"
    return f"{default[:-1]}; {trained}."


def _position_limit(config) -> int:
    """Longest sequence the model's positions allow (a large default for position-free models)."""
    return int(getattr(config, "max_position_embeddings", None) or 1 << 20)
