"""Config sections every program composes: each setting is defined once, here, and named by its section.

A program's config holds a section as a field (`sampling: Sampling = section(Sampling(), ...)`),
with the defaults that program wants; flags, TOML tables and environment variables reach
it as `--sampling.max-tokens`, `[sampling] max_tokens` and `<PREFIX>SAMPLING__MAX_TOKENS`
(see `services/common/config.py`). Each section checks its own values in `__post_init__`;
checks that span sections live in the composing config.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.weight_stream import PUSH_DTYPE_NAMES

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LR_SCHEDULES = ("constant", "cosine")
PUSH_SCOPES = ("full", "changed")
WEIGHT_TRANSFERS = ("grpc", "nccl")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class Sampling:
    """What one step generates: prompts x samples each, and how tokens are drawn."""

    prompts_per_step: int = option(4, "Prompts sampled per step.")
    samples_per_prompt: int = option(4, "Samples per prompt (the group for grpo/rloo; >= 2 for those).")
    max_tokens: int = option(48, "Tokens generated per sample.")
    temperature: float = option(1.0, "Sampling temperature (> 0 when training: the loss uses the same).")
    top_p: float = option(1.0, "Nucleus sampling mass; keep 1.0 when training so the logprobs match the trainer's.")

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1 or self.samples_per_prompt < 1 or self.max_tokens < 1:
            raise ValueError("sampling.prompts_per_step, samples_per_prompt and max_tokens must be >= 1")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"sampling.temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )


@dataclass(frozen=True)
class Optimizer:
    """The policy's AdamW optimizer, its learning-rate schedule and the micro-batching of its passes."""

    learning_rate: float = option(1e-5, "AdamW learning rate of the policy.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_schedule: str = option("constant", f"{' or '.join(LR_SCHEDULES)} (to 10% at the last step), after warmup.")
    warmup_steps: int = option(0, "Linear learning-rate warmup, in steps.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    micro_batch_size: int = option(8, "Samples per forward/backward pass (gradient accumulation bounds memory).")

    def __post_init__(self) -> None:
        _choice("optimizer.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.learning_rate < 0 or self.weight_decay < 0 or self.max_grad_norm < 0 or self.warmup_steps < 0:
            raise ValueError("optimizer.learning_rate, weight_decay, max_grad_norm and warmup_steps must be >= 0")
        if self.micro_batch_size < 1:
            raise ValueError("optimizer.micro_batch_size must be >= 1")


@dataclass(frozen=True)
class Lora:
    """Low-rank adapters instead of full fine-tuning (rank 0)."""

    rank: int = option(
        0,
        "LoRA rank (0: full fine-tuning). LoRA needs far less trainer memory (no reference copy, "
        "small optimizer state); pushes carry the merged weights.",
    )
    alpha: float = option(32.0, "LoRA alpha (scale alpha / rank).")
    dropout: float = option(0.0, "LoRA dropout (keep 0 so the trainer's logprobs match the engine's).")
    targets: tuple[str, ...] = option(LORA_TARGETS, "Module names LoRA adapts (comma-separated).")

    def __post_init__(self) -> None:
        if self.rank < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.rank must be >= 0 and dropout in [0, 1), got {self.rank}, {self.dropout}")
        if self.rank > 0 and not self.targets:
            raise ValueError("lora.targets must name at least one module when lora.rank > 0")


@dataclass(frozen=True)
class Push:
    """How trained weights reach the policy service."""

    dtype: str = option("float32", f"dtype of pushed weights ({', '.join(PUSH_DTYPE_NAMES)}).")
    chunk_mb: float = option(4.0, "Weight-push chunk size, MiB.")
    scope: str = option(
        "full",
        "full: every tensor; changed: only the tensors training changes, completed to whole "
        "fused units (the policy must know the model type; needs LoRA).",
    )
    weight_transfer: str = option(
        "grpc",
        "How pushes move the weights: grpc (streamed over gRPC; works anywhere, the default) or nccl (GPU data "
        "path through vLLM's NCCL weight-transfer engine, gRPC stays the control plane; needs CUDA here, a policy "
        "started with --weight-transfer=nccl and one policy address; falls back to grpc when the policy takes "
        "gRPC only).",
    )
    nccl_master_address: str = option(
        "",
        "weight_transfer=nccl: address of this trainer the policy's host can reach "
        "for the NCCL rendezvous. Empty: this host's address as its hostname resolves.",
    )
    nccl_master_port: int = option(29600, "weight_transfer=nccl: TCP port of the NCCL rendezvous on this trainer.")

    def __post_init__(self) -> None:
        _choice("push.dtype", self.dtype, PUSH_DTYPE_NAMES)
        _choice("push.scope", self.scope, PUSH_SCOPES)
        _choice("push.weight_transfer", self.weight_transfer, WEIGHT_TRANSFERS)
        if self.chunk_mb <= 0:
            raise ValueError(f"push.chunk_mb must be > 0, got {self.chunk_mb}")


@dataclass(frozen=True)
class Endpoints:
    """Where the services are, and how calls to them wait and retry."""

    policy: str = option(
        "127.0.0.1:50051",
        "host:port of the policy service; replicas comma-separated, or dns:///name:port for every address of a name.",
    )
    reward: str = option("127.0.0.1:50052", "host:port of the reward service; replicas as for policy.")
    feedback: str = option(
        "127.0.0.1:50053", "host:port of the FeedbackService over the experience store (read by the online loop)."
    )
    rpc_timeout_s: float = option(600.0, "Deadline for each Generate/Score/PushWeights call.")
    rpc_retries: int = option(3, "Retries (with backoff) on UNAVAILABLE before a replica leaves the rotation.")
    replica_wait_s: float = option(
        300.0,
        "How long a call waits, retrying with backoff and jitter, for a policy or "
        "reward replica to come back before the run fails.",
    )

    def __post_init__(self) -> None:
        if self.rpc_timeout_s <= 0 or self.rpc_retries < 0 or self.replica_wait_s < 0:
            raise ValueError("endpoints.rpc_timeout_s must be > 0, rpc_retries and replica_wait_s >= 0")


@dataclass(frozen=True)
class Run:
    """Where a run writes, how it seeds, logs and is scraped, and what it trains on."""

    seed: int = option(0, "Seed for prompt order, sampling seeds and torch.")
    device: str = option("cpu", "Torch device for training (cpu, cuda).")
    output_dir: str = option("runs/train", "Where metrics, checkpoints and summary.json go.")
    log_level: str = option("INFO", "Python logging level.")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 disables it).")

    def __post_init__(self) -> None:
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"run.metrics_port must be a port number (0 disables), got {self.metrics_port}")
