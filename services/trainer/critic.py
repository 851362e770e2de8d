"""PPO's critic: a transformer backbone (initialized from a checkpoint) with a scalar value head.

A separate model rather than a head on the policy, as in OpenRLHF and the
InstructGPT setup: the value regression then cannot pull the policy's features,
and the critic keeps its own optimizer and learning rate.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "critic.safetensors"


class ValueModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1)
        # Starting at V = 0 keeps the first steps' advantages equal to the returns.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, model_dir: str, dtype: torch.dtype = torch.float32) -> ValueModel:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        return cls(AutoModel.from_pretrained(model_dir, dtype=dtype), int(config.hidden_size))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values aligned with the logprob columns: column j is V(state after tokens 0..j)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, :-1]).squeeze(-1).float()

    def save(self, directory: Path) -> None:
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))

    def load(self, directory: Path) -> None:
        self.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
