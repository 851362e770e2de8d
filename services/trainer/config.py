"""Trainer configuration (flags, `RLHF_TRAINER_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.model_store import DEFAULT_CACHE
from services.trainer.advantages import ALGORITHMS
from services.trainer.distributed import BACKENDS, check_supported, world_from_env
from services.trainer.losses import KL_ESTIMATORS
from services.trainer.rewards import COMBINES, NORMALIZERS

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PUSH_SCOPES = ("full", "changed")


@dataclass(frozen=True)
class TrainerConfig:
    """Train the served policy with RL against the reward service, pushing weights every step."""

    # services and data
    policy_address: str = option(
        "127.0.0.1:50051", "host:port of the policy service; replicas comma-separated, or dns:///name:port for every address of a name."
    )
    reward_address: str = option("127.0.0.1:50052", "host:port of the reward service; replicas as for policy_address.")
    model: str = option("", "Checkpoint the policy service started from (same weights). Empty: SmolLM2-135M-Instruct from the model cache.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    prompts_file: str = option("data/book_reviews.jsonl", "JSONL with {prompt, reference} per line.")
    output_dir: str = option("runs/train", "Where metrics, checkpoints and summary.json go.")
    resume: str = option("", "Continue a run: 'latest' (newest checkpoint in output_dir) or a checkpoint directory.")
    # rollouts
    steps: int = option(10, "Total optimizer steps of the run (a resumed run continues up to this number).")
    prompts_per_step: int = option(4, "Prompts sampled per step.")
    samples_per_prompt: int = option(4, "Samples per prompt (the group for grpo/rloo), >= 2 for those.")
    max_tokens: int = option(48, "Tokens generated per sample.")
    temperature: float = option(1.0, "Sampling temperature (> 0; the loss uses the same).")
    top_p: float = option(1.0, "Nucleus sampling mass; keep 1.0 so the logprobs match the trainer's.")
    apply_chat_template: bool = option(True, "Send prompts through the model's chat template.")
    async_rollouts: bool = option(False, "Generate batch N+1 on a background thread while training on batch N.")
    max_staleness: int = option(1, "Async mode: drop batches sampled more than this many weight versions before the trainer's (>= 1).")
    # rewards
    reward_model: str = option("similarity", "Reward model name on the reward service (used when reward_models is empty).")
    reward_models: tuple[str, ...] = option((), "Ensemble: several reward model names (comma-separated), one Score call each.")
    reward_combine: str = option("mean", f"How ensemble scores combine: {', '.join(COMBINES)} (mean - k * std across models).")
    reward_uncertainty_k: float = option(1.0, "k of mean_minus_std.")
    reward_normalize: str = option("none", f"Standardize each model's scores before combining: {', '.join(NORMALIZERS)} (every score so far).")
    reward_clip: float = option(0.0, "Clip the combined reward to [-c, c] (0 disables).")
    # the objective
    algorithm: str = option("grpo", f"Advantage estimator: {', '.join(ALGORITHMS)} (ppo trains a critic).")
    learning_rate: float = option(1e-5, "AdamW learning rate of the policy.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_schedule: str = option("constant", "constant or cosine (to 10% at the last step), after warmup.")
    warmup_steps: int = option(0, "Linear learning-rate warmup, in steps.")
    kl_coef: float = option(0.05, "KL coefficient to the frozen reference policy (the start value if kl_target > 0).")
    kl_estimator: str = option("k3", f"Per-token KL estimator: {', '.join(KL_ESTIMATORS)}.")
    kl_in: str = option("auto", "Where the KL penalty goes: loss (a loss term, as GRPO), reward (per-token reward penalty, as PPO/RLOO/REINFORCE++), auto (loss for grpo, reward otherwise).")
    kl_target: float = option(0.0, "Adaptive KL controller: per-token KL to hold (0: fixed coefficient).")
    kl_horizon: int = option(10_000, "Adaptive KL controller horizon, in samples.")
    clip_eps: float = option(0.2, "PPO ratio clip range.")
    tis_cap: float = option(2.0, "Truncated importance sampling cap on trainer/engine probability ratios (0: ratio against the engine's logprobs, no correction).")
    entropy_coef: float = option(0.0, "Entropy bonus weight (0: entropy only logged).")
    ppo_epochs: int = option(1, "Optimizer steps per rollout, each over the whole batch.")
    gamma: float = option(1.0, "Discount of token-level returns (ppo, reinforce_pp).")
    gae_lambda: float = option(0.95, "GAE lambda (ppo).")
    value_clip_eps: float = option(0.2, "Value clip range around the old values (ppo).")
    critic_model: str = option("", "Critic start checkpoint (ppo). Empty: the policy's.")
    critic_learning_rate: float = option(1e-5, "AdamW learning rate of the critic (ppo).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    micro_batch_size: int = option(8, "Samples per forward/backward pass (gradient accumulation bounds memory).")
    # LoRA and pushes
    lora_rank: int = option(0, "LoRA rank (0: full fine-tuning).")
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / rank).")
    lora_dropout: float = option(0.0, "LoRA dropout (keep 0 so the trainer's logprobs match the engine's).")
    lora_targets: tuple[str, ...] = option(LORA_TARGETS, "Module names LoRA adapts (comma-separated).")
    push_scope: str = option("full", "full: every tensor; changed: only the tensors training changes, completed to whole fused units (the policy must know the model type).")
    push_dtype: str = option("float32", "dtype of pushed weights (float32, bfloat16, float16).")
    push_chunk_mb: float = option(4.0, "Weight-push chunk size, MiB.")
    weight_transfer: str = option("grpc", "How pushes move the weights: grpc (streamed over gRPC; works anywhere, the default) or nccl (GPU data path through vLLM's NCCL weight-transfer engine, gRPC stays the control plane; needs CUDA here, a policy started with --weight-transfer=nccl and one policy address; falls back to grpc when the policy takes gRPC only).")
    nccl_master_address: str = option("", "weight_transfer=nccl: address of this trainer the policy's host can reach for the NCCL rendezvous. Empty: this host's address as its hostname resolves.")
    nccl_master_port: int = option(29600, "weight_transfer=nccl: TCP port of the NCCL rendezvous on this trainer.")
    # run
    seed: int = option(0, "Seed for prompt order, sampling seeds and torch.")
    device: str = option("cpu", "Torch device for training (cpu, cuda).")
    dist_backend: str = option("auto", "torch.distributed backend under torchrun: gloo, nccl, auto (nccl on cuda, gloo otherwise).")
    checkpoint_every: int = option(0, "Save a checkpoint every N steps (0: only at the end).")
    rpc_timeout_s: float = option(600.0, "Deadline for each Generate/Score/PushWeights call.")
    rpc_retries: int = option(3, "Retries (with backoff) on UNAVAILABLE before a replica leaves the rotation.")
    replica_wait_s: float = option(
        300.0, "How long a call waits, retrying with backoff and jitter, for a policy or reward replica to come back before the run fails."
    )
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 disables it).")
    log_level: str = option("INFO", "Python logging level.")

    @property
    def reward_names(self) -> tuple[str, ...]:
        return self.reward_models or (self.reward_model,)

    @property
    def kl_placement(self) -> str:
        """'loss' or 'reward', resolving auto the way each algorithm's paper places it."""
        if self.kl_in != "auto":
            return self.kl_in
        return "loss" if self.algorithm == "grpo" else "reward"

    def validate(self) -> None:
        """Raises ValueError naming the setting that is wrong."""
        choices = {
            "algorithm": (self.algorithm, ALGORITHMS),
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
            "kl_in": (self.kl_in, ("auto", "loss", "reward")),
            "reward_combine": (self.reward_combine, COMBINES),
            "reward_normalize": (self.reward_normalize, NORMALIZERS),
            "lr_schedule": (self.lr_schedule, ("constant", "cosine")),
            "push_scope": (self.push_scope, PUSH_SCOPES),
            "weight_transfer": (self.weight_transfer, ("grpc", "nccl")),
            "dist_backend": (self.dist_backend, BACKENDS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.algorithm in ("grpo", "rloo") and self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2 for {self.algorithm}: it compares samples of a prompt")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for training (the loss needs the sampling distribution)")
        if self.async_rollouts and self.max_staleness < 1:
            raise ValueError("async_rollouts needs max_staleness >= 1: the overlapped batch is always one version behind")
        if self.ppo_epochs < 1 or self.micro_batch_size < 1 or self.steps < 0:
            raise ValueError("ppo_epochs and micro_batch_size must be >= 1, steps >= 0")
        if self.push_scope == "changed" and self.lora_rank == 0:
            raise ValueError("push_scope=changed needs LoRA (lora_rank > 0): full fine-tuning changes every tensor")
        if self.tis_cap < 0 or self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError("tis_cap, kl_coef and entropy_coef must be >= 0")
        world = world_from_env()
        if world.is_distributed:  # under torchrun: only what the sharded learner implements
            check_supported(self.lora_rank, self.algorithm, self.resume, self.prompts_per_step * self.samples_per_prompt, world.size)
