"""Online loop configuration (flags, `RLHF_ONLINE_*` environment, or a TOML file).

The online loop trains with the trainer's step (`services/trainer/update.py`), so it holds
the trainer's sections whole -- sampling, objective, rewards, optimizer, lora, push,
endpoints, run -- as the same dataclasses with online defaults, and `trainer_config()`
hands them to the learner unchanged: every algorithm, LoRA, TIS and KL setting means in
`rlhf-online run` what it means in `rlhf-trainer train`. The rest is the online loop's own:
rounds, live-prompt replay, reward-model refreshes and the canary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from services.common.config import option, section
from services.common.model_store import DEFAULT_CACHE
from services.common.sections import Endpoints, Lora, Optimizer, Push, Run, Sampling
from services.online.canary import CanarySettings
from services.online.hacking_guard import GuardSettings
from services.online.reward_refresh import RefreshSettings
from services.trainer.config import Objective, Rewards, TrainerConfig
from services.trainer.ppg import PPGSettings

# TrainerConfig sections the online loop does not take, and why (a unit test holds OnlineConfig to this list:
# every other section of TrainerConfig is a field of OnlineConfig and reaches the learner unchanged).
TRAINER_ONLY_SECTIONS: dict[str, str] = {
    "exploration": "its temperature schedule spans a run of fixed length; online rounds sample at sampling.temperature",
    "templates": "prompt templates format prompts from a file; live prompts arrive already tokenized by the policy",
    "tasks": "tasks split a prompt file by reward model; the online loop trains on live traffic with rewards.model",
}
# An RL round's optimizer updates: the learning-rate schedule spans this many (the loop runs until stopped).
SCHEDULE_STEPS = 10**9


@dataclass(frozen=True)
class OnlineConfig:
    """Improve the deployed policy from its live traffic: reward model refreshes, RL rounds, canary rollouts."""

    canary_address: str = option(
        "127.0.0.1:50061",
        "Canary policy replica: new versions serve here first; RL samples "
        "here. endpoints.policy is the stable replica (most users).",
    )
    model: str = option("", "Checkpoint both replicas started from. Empty: SmolLM2-135M-Instruct from the model cache.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    resume: bool = option(True, "Continue from the newest checkpoint in run.output_dir when there is one.")
    # how long
    duration_s: float = option(0.0, "Stop after this many seconds (0: run until SIGTERM/SIGINT).")
    max_rounds: int = option(0, "Stop after this many rounds in this process (0: no limit).")
    idle_s: float = option(5.0, "Wait between checks while there are no live prompts or no reward model yet.")
    # the reward model (rewards.model names it: trained here, published to and scored by the reward service)
    rm_base_model: str = option(
        "", "Backbone of the first reward model (safetensors dir). Empty: the packaged all-MiniLM-L6-v2."
    )
    rm_min_new_pairs: int = option(
        16, "Retrain once this many denoised preference pairs are new or changed since the last training."
    )
    rm_replay_pairs: int = option(256, "Older pairs replayed in each retraining.")
    rm_max_fresh_pairs: int = option(
        0, "Newest fresh pairs one retraining takes (0: all); bounds its time on a busy CPU."
    )
    rm_min_agreement: float = option(0.6, "Ignore pairs whose weighted votes agree less than this.")
    rm_heldout_share: float = option(
        0.0, "Share of live pairs (fixed by pair id) never trained on, kept to judge the reward model."
    )
    rm_epochs: int = option(2, "Epochs of each retraining.")
    rm_learning_rate: float = option(3e-5, "Reward-model learning rate.")
    rm_batch_size: int = option(16, "Pairs per reward-model step.")
    rm_max_length: int = option(256, "Tokens per (prompt, completion) pair for the reward model.")
    rm_threads: int = option(0, "torch threads for reward-model training (0: default).")
    # RL rounds
    steps_per_round: int = option(2, "RL steps per round; each round ends with one candidate version on the canary.")
    max_version_lag: int = option(
        1,
        "Most trainer updates between the weights that sampled a batch and the weights it trains; staler batches "
        "are dropped.",
    )
    live_fraction: float = option(
        0.5, "Share of a step's prompts from the newest live prompts; the rest replay older ones."
    )
    live_window: int = option(32, "How many of the most recently seen prompts count as live.")
    replay_capacity: int = option(1024, "Distinct prompts kept for replay.")
    canary: CanarySettings = section(
        CanarySettings(),
        "The canary gate: a sequential test on paired stable-vs-canary judgements (services/online/sequential.py).",
    )
    guard: GuardSettings = section(
        GuardSettings(),
        "Reward-hacking guard: stop RL when the proxy reward rises while "
        "gold feedback falls (services/online/hacking_guard.py).",
    )
    keep_checkpoints: int = option(2, "Checkpoints kept in run.output_dir (older ones are deleted).")
    # the trainer's sections
    sampling: Sampling = section(Sampling(), "What one RL step samples from the canary.")
    objective: Objective = section(Objective(), "The algorithm and its loss (as rlhf-trainer train).")
    rewards: Rewards = section(
        Rewards(model="online-rm"), "The reward model trained here and how its scores become rewards."
    )
    optimizer: Optimizer = section(Optimizer(), "The policy's optimizer.")
    lora: Lora = section(Lora(), "LoRA adapters (rank 0: full fine-tuning).")
    push: Push = section(Push(), "Weight pushes to the replicas (whole weights over gRPC).")
    endpoints: Endpoints = section(Endpoints(), "The stable policy replica, reward and feedback services.")
    ppg: PPGSettings = section(PPGSettings(), "Phasic Policy Gradient's auxiliary phase (objective.algorithm=ppg).")
    run: Run = section(
        Run(output_dir="runs/online"),
        "Seed, device, output directory (checkpoints, reward models, "
        "rounds.jsonl, versions.json; a restart with it resumes), logging.",
    )

    def __post_init__(self) -> None:
        if self.steps_per_round < 1 or self.max_version_lag < 0:
            raise ValueError("steps_per_round must be >= 1 and max_version_lag >= 0")
        if self.steps_per_round > self.max_version_lag + 1:
            raise ValueError(
                f"steps_per_round={self.steps_per_round} needs max_version_lag >= {self.steps_per_round - 1}: "
                "a round's batches are all sampled from the version serving at its start"
            )
        if not 0.0 <= self.live_fraction <= 1.0:
            raise ValueError("live_fraction must be in [0, 1]")
        if self.rm_min_new_pairs < 2 or self.keep_checkpoints < 1:
            raise ValueError("rm_min_new_pairs must be >= 2 (one is held out) and keep_checkpoints >= 1")
        if self.rewards.models:
            raise ValueError("rewards.models: the online loop trains and scores one reward model (rewards.model)")
        if self.push.scope != "full" or self.push.weight_transfer != "grpc":
            raise ValueError(
                "the online loop pushes whole weights over gRPC to its replicas: push.scope=full, "
                "push.weight_transfer=grpc"
            )
        self.trainer_config("")  # and the trainer's checks that span sections (e.g. grpo needs >= 2 samples)

    def trainer_config(self, model_dir: str) -> TrainerConfig:
        """The trainer's config the shared step reads: every section this config shares with it, unchanged."""
        mine = {f.name for f in dataclasses.fields(self)}
        shared = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(TrainerConfig)
            if f.metadata.get("section") and f.name in mine
        }
        return TrainerConfig(model=model_dir, model_cache=self.model_cache, steps=SCHEDULE_STEPS, **shared)

    def refresh(self) -> RefreshSettings:
        return RefreshSettings(
            reward_address=self.endpoints.reward,
            model_name=self.rewards.model,
            base_model=self.rm_base_model,
            output_dir=Path(self.run.output_dir) / "reward-models",
            min_new_pairs=self.rm_min_new_pairs,
            replay_pairs=self.rm_replay_pairs,
            max_fresh_pairs=self.rm_max_fresh_pairs,
            epochs=self.rm_epochs,
            learning_rate=self.rm_learning_rate,
            batch_size=self.rm_batch_size,
            max_length=self.rm_max_length,
            threads=self.rm_threads,
            seed=self.run.seed,
        )
