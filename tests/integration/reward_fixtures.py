"""Fixtures for the reward service: a tiny classifier checkpoint and a running server.

conftest.py star-imports this module; `__all__` limits that to the fixture and the
helpers the reward tests share.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.model_store import minilm_dir
from services.common.process import ServerProcess, free_port

__all__ = ["REWARD_MODELS_TOML", "REWARD_QUOTAS_TOML", "RewardServer", "build_tiny_classifier", "reward_server"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

REWARD_MODELS_TOML = """\
[[models]]
name = "similarity"
kind = "similarity"

[[models]]
name = "tiny-rm"
kind = "classifier"
path = "tiny-rm"

[[models]]
name = "tiny-rm-b"
kind = "classifier"
path = "tiny-rm-b"

[[models]]
name = "length"
kind = "rules"
target_words = 10
required_words = ["book"]
banned_words = ["hate"]

[[ensembles]]
name = "tiny-ensemble"
members = ["tiny-rm", "tiny-rm-b"]
aggregation = "mean_minus_std"
k = 0.5
"""

# Tenants the quota tests use; every other tenant is unlimited.
REWARD_QUOTAS_TOML = """\
[tenants.limited]
items_per_s = 10
burst_items = 4

[tenants.single]
max_concurrent_requests = 1
"""


def build_tiny_classifier(path: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A random 2-layer BERT sequence classifier (hidden 32) with MiniLM's tokenizer, in safetensors."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    source = minilm_dir()
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, path / name)
    return path


@dataclass(frozen=True)
class RewardServer:
    address: str
    metrics_url: str
    models_file: Path
    process: ServerProcess
    root: Path


@pytest.fixture(scope="session")
def reward_server(tmp_path_factory: pytest.TempPathFactory):
    """`python -m services.reward` hosting similarity (MiniLM), tiny-rm and tiny-rm-b (classifiers), length
    (rules) and the tiny-ensemble, with tenant quotas for the tenants `limited` and `single`."""
    root = tmp_path_factory.mktemp("reward")
    build_tiny_classifier(root / "tiny-rm")
    build_tiny_classifier(root / "tiny-rm-b", seed=1)
    models_file = root / "models.toml"
    models_file.write_text(REWARD_MODELS_TOML)
    quotas_file = root / "quotas.toml"
    quotas_file.write_text(REWARD_QUOTAS_TOML)
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--models-file",
        str(models_file),
        # A wider window than the default 5 ms so concurrent test callers reliably share
        # batches even on a loaded 2-core machine.
        "--max-wait-ms",
        "20",
        "--quotas-file",
        str(quotas_file),
    ]
    process = ServerProcess("services.reward", args, root / "reward.log", env={"HF_HUB_OFFLINE": "1"})
    process.start(address, timeout_s=120)
    yield RewardServer(address, f"http://127.0.0.1:{metrics_port}/metrics", models_file, process, root)
    code = process.stop()
    assert code == 0, f"reward server exited with {code} on SIGTERM\n{process.log_tail()}"
