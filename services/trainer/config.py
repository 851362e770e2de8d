"""Trainer configuration (flags, `RLHF_TRAINER_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.model_store import DEFAULT_CACHE


@dataclass(frozen=True)
class TrainerConfig:
    """Train the served policy with GRPO against the reward service, pushing weights every step."""

    policy_address: str = option("127.0.0.1:50051", "host:port of the policy service.")
    reward_address: str = option("127.0.0.1:50052", "host:port of the reward service.")
    reward_model: str = option("similarity", "Reward model name on the reward service.")
    model: str = option("", "Checkpoint the policy service started from (same weights). Empty: SmolLM2-135M-Instruct from the model cache.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    prompts_file: str = option("data/book_reviews.jsonl", "JSONL with {prompt, reference} per line.")
    output_dir: str = option("runs/train", "Where metrics, checkpoints and summary.json go.")
    steps: int = option(10, "Optimizer steps (each: generate, score, update, push).")
    prompts_per_step: int = option(4, "Prompts sampled per step.")
    samples_per_prompt: int = option(4, "Samples per prompt (the GRPO group size), >= 2.")
    max_tokens: int = option(48, "Tokens generated per sample.")
    temperature: float = option(1.0, "Sampling temperature (> 0; the loss uses the same).")
    top_p: float = option(1.0, "Nucleus sampling mass; keep 1.0 so the logprobs match the trainer's.")
    apply_chat_template: bool = option(True, "Send prompts through the model's chat template.")
    learning_rate: float = option(1e-5, "AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    kl_coef: float = option(0.05, "Weight of the KL penalty to the frozen reference policy (k3 estimator).")
    clip_eps: float = option(0.2, "PPO ratio clip range.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    micro_batch_size: int = option(8, "Samples per forward/backward pass (gradient accumulation bounds memory).")
    seed: int = option(0, "Seed for prompt order, sampling seeds and torch.")
    device: str = option("cpu", "Torch device for training (cpu, cuda).")
    push_dtype: str = option("float32", "dtype of pushed weights (float32, bfloat16, float16).")
    push_chunk_mb: float = option(4.0, "Weight-push chunk size, MiB.")
    checkpoint_every: int = option(0, "Save a checkpoint every N steps (0: only at the end).")
    rpc_timeout_s: float = option(600.0, "Deadline for each Generate/Score/PushWeights call.")
    rpc_retries: int = option(3, "Retries (with backoff) on UNAVAILABLE before giving up.")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 disables it).")
    log_level: str = option("INFO", "Python logging level.")
