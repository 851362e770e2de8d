"""Trainer configuration (flags, `RLHF_TRAINER_*` environment, or a TOML file), composed of sections.

The shared sections (sampling, optimizer, lora, push, endpoints, run) are defined once in
`services/common/sections.py`; the two trainer-specific ones, `objective` (the RL algorithm
and its loss) and `rewards` (how reward models' scores become one reward), are here. The
online loop composes the same section objects, so every setting of the trainer's step
reaches it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option, section
from services.common.model_store import DEFAULT_CACHE
from services.common.prompt_templates import TemplateSettings
from services.common.sections import Endpoints, Lora, Optimizer, Push, Run, Sampling
from services.trainer.advantages import ALGORITHMS
from services.trainer.distributed import BACKENDS, check_supported, world_from_env
from services.trainer.exploration import ExplorationSettings
from services.trainer.losses import KL_ESTIMATORS
from services.trainer.ppg import PPGSettings
from services.trainer.rewards import COMBINES, NORMALIZERS
from services.trainer.tasks import TaskSettings

KL_PLACEMENTS = ("auto", "loss", "reward")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class Objective:
    """What a step optimizes: the advantage estimator, the clipped policy loss and its KL, TIS and entropy terms."""

    algorithm: str = option(
        "grpo",
        f"Advantage estimator: {', '.join(ALGORITHMS)} (ppo and ppg train a critic; "
        "ppg adds the auxiliary phase of the ppg section).",
    )
    kl_coef: float = option(0.05, "KL coefficient to the frozen reference policy (the start value if kl_target > 0).")
    kl_estimator: str = option("k3", f"Per-token KL estimator: {', '.join(KL_ESTIMATORS)}.")
    kl_in: str = option(
        "auto",
        "Where the KL penalty goes: loss (a loss term, as GRPO), reward (per-token reward "
        "penalty, as PPO/RLOO/REINFORCE++), auto (loss for grpo, reward otherwise).",
    )
    kl_target: float = option(0.0, "Adaptive KL controller: per-token KL to hold (0: fixed coefficient).")
    kl_horizon: int = option(10_000, "Adaptive KL controller horizon, in samples.")
    clip_eps: float = option(0.2, "PPO ratio clip range.")
    tis_cap: float = option(
        2.0,
        "Truncated importance sampling cap on trainer/engine probability ratios (0: ratio "
        "against the engine's logprobs, no correction).",
    )
    entropy_coef: float = option(0.0, "Entropy bonus weight (0: entropy only logged).")
    ppo_epochs: int = option(1, "Optimizer steps per rollout, each over the whole batch.")
    gamma: float = option(1.0, "Discount of token-level returns (ppo, ppg, reinforce_pp).")
    gae_lambda: float = option(0.95, "GAE lambda (ppo, ppg).")
    value_clip_eps: float = option(0.2, "Value clip range around the old values (ppo, ppg).")
    critic_model: str = option("", "Critic start checkpoint (ppo, ppg). Empty: the policy's.")
    critic_learning_rate: float = option(1e-5, "AdamW learning rate of the critic (ppo, ppg).")

    def __post_init__(self) -> None:
        _choice("objective.algorithm", self.algorithm, ALGORITHMS)
        _choice("objective.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("objective.kl_in", self.kl_in, KL_PLACEMENTS)
        if self.tis_cap < 0 or self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError("objective.tis_cap, kl_coef and entropy_coef must be >= 0")
        if self.ppo_epochs < 1:
            raise ValueError("objective.ppo_epochs must be >= 1")

    @property
    def kl_placement(self) -> str:
        """'loss' or 'reward', resolving auto the way each algorithm's paper places it."""
        if self.kl_in != "auto":
            return self.kl_in
        return "loss" if self.algorithm == "grpo" else "reward"


@dataclass(frozen=True)
class Rewards:
    """Which reward models score a sample and how their scores become one reward."""

    model: str = option("similarity", "Reward model name on the reward service (used when models is empty).")
    models: tuple[str, ...] = option((), "Ensemble: several reward model names (comma-separated), one Score call each.")
    combine: str = option("mean", f"How ensemble scores combine: {', '.join(COMBINES)} (mean - k * std across models).")
    uncertainty_k: float = option(1.0, "k of mean_minus_std.")
    normalize: str = option(
        "none", f"Standardize each model's scores before combining: {', '.join(NORMALIZERS)} (every score so far)."
    )
    clip: float = option(0.0, "Clip the combined reward to [-c, c] (0 disables).")

    def __post_init__(self) -> None:
        _choice("rewards.combine", self.combine, COMBINES)
        _choice("rewards.normalize", self.normalize, NORMALIZERS)
        if self.clip < 0:
            raise ValueError(f"rewards.clip must be >= 0, got {self.clip}")

    @property
    def names(self) -> tuple[str, ...]:
        return self.models or (self.model,)


@dataclass(frozen=True)
class TrainerConfig:
    """Train the served policy with RL against the reward service, pushing weights every step."""

    model: str = option(
        "",
        "Checkpoint the policy service started from (same weights). Empty: SmolLM2-135M-Instruct from the model cache.",
    )
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    prompts_file: str = option("data/book_reviews.jsonl", "JSONL with {prompt, reference} per line.")
    resume: str = option(
        "", "Continue a run: 'latest' (newest checkpoint in run.output_dir) or a checkpoint directory."
    )
    steps: int = option(10, "Total optimizer steps of the run (a resumed run continues up to this number).")
    apply_chat_template: bool = option(True, "Send prompts through the model's chat template.")
    async_rollouts: bool = option(False, "Generate batch N+1 on a background thread while training on batch N.")
    max_staleness: int = option(
        1, "Async mode: drop batches sampled more than this many weight versions before the trainer's (>= 1)."
    )
    checkpoint_every: int = option(0, "Save a checkpoint every N steps (0: only at the end).")
    dist_backend: str = option(
        "auto", "torch.distributed backend under torchrun: gloo, nccl, auto (nccl on cuda, gloo otherwise)."
    )
    sampling: Sampling = section(Sampling(), "What one step generates.")
    objective: Objective = section(Objective(), "The algorithm and its loss.")
    rewards: Rewards = section(Rewards(), "Reward models and how their scores combine.")
    optimizer: Optimizer = section(Optimizer(), "The policy's optimizer.")
    lora: Lora = section(Lora(), "LoRA adapters (rank 0: full fine-tuning).")
    push: Push = section(Push(), "Weight pushes to the policy.")
    endpoints: Endpoints = section(Endpoints(), "The policy and reward services.")
    run: Run = section(Run(), "Seed, device, output directory, logging.")
    ppg: PPGSettings = section(PPGSettings(), "Phasic Policy Gradient's auxiliary phase (objective.algorithm=ppg).")
    exploration: ExplorationSettings = section(
        ExplorationSettings(), "Rollout temperature schedule and diversity metrics."
    )
    templates: TemplateSettings = section(TemplateSettings(), "Named prompt templates (system prompt + format).")
    tasks: TaskSettings = section(TaskSettings(), "Multi-task training: tasks, their reward models and prompt shares.")

    def __post_init__(self) -> None:
        """Raises ValueError naming the setting that is wrong (each section checks its own values first)."""
        _choice("dist_backend", self.dist_backend, BACKENDS)
        algorithm = self.objective.algorithm
        if algorithm in ("grpo", "rloo") and self.sampling.samples_per_prompt < 2:
            raise ValueError(
                f"sampling.samples_per_prompt must be >= 2 for {algorithm}: it compares samples of a prompt"
            )
        if self.sampling.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0 for training (the loss needs the sampling distribution)")
        if self.async_rollouts and self.max_staleness < 1:
            raise ValueError(
                "async_rollouts needs max_staleness >= 1: the overlapped batch is always one version behind"
            )
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.push.scope == "changed" and self.lora.rank == 0:
            raise ValueError("push.scope=changed needs LoRA (lora.rank > 0): full fine-tuning changes every tensor")
        world = world_from_env()
        if world.is_distributed:  # under torchrun: only what the sharded learner implements
            batch = self.sampling.prompts_per_step * self.sampling.samples_per_prompt
            check_supported(self.lora.rank, algorithm, self.resume, batch, world.size)
            if self.exploration.temperature_schedule != "constant":  # the sharded learner reads sampling.temperature
                raise ValueError("exploration.temperature_schedule must be constant under torchrun (FSDP)")
