"""Online loop configuration (flags, `RLHF_ONLINE_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import option
from services.common.model_store import DEFAULT_CACHE
from services.online.canary import CanarySettings
from services.online.reward_refresh import RefreshSettings


@dataclass(frozen=True)
class OnlineConfig:
    """Improve the deployed policy from its live traffic: reward model refreshes, RL rounds, canary rollouts."""

    # services
    stable_address: str = option("127.0.0.1:50051", "Stable policy replica (most users).")
    canary_address: str = option("127.0.0.1:50061", "Canary policy replica: new versions serve here first; RL samples here.")
    feedback_address: str = option("127.0.0.1:50053", "FeedbackService over the experience store both replicas record into.")
    reward_address: str = option("127.0.0.1:50052", "Reward service (scores rollouts; RewardAdminService takes new reward models).")
    model: str = option("", "Checkpoint both replicas started from. Empty: SmolLM2-135M-Instruct from the model cache.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    output_dir: str = option("runs/online", "Checkpoints, reward models, rounds.jsonl, versions.json. A restart with the same directory resumes.")
    resume: bool = option(True, "Continue from the newest checkpoint in output_dir when there is one.")
    # how long
    duration_s: float = option(0.0, "Stop after this many seconds (0: run until SIGTERM/SIGINT).")
    max_rounds: int = option(0, "Stop after this many rounds in this process (0: no limit).")
    idle_s: float = option(5.0, "Wait between checks while there are no live prompts or no reward model yet.")
    # the reward model
    reward_model: str = option("online-rm", "Reward model name: trained here, published to and scored by the reward service.")
    rm_base_model: str = option("", "Backbone of the first reward model (safetensors dir). Empty: the packaged all-MiniLM-L6-v2.")
    rm_min_new_pairs: int = option(16, "Retrain once this many denoised preference pairs are new or changed since the last training.")
    rm_replay_pairs: int = option(256, "Older pairs replayed in each retraining.")
    rm_min_agreement: float = option(0.6, "Ignore pairs whose weighted votes agree less than this.")
    rm_epochs: int = option(2, "Epochs of each retraining.")
    rm_learning_rate: float = option(3e-5, "Reward-model learning rate.")
    rm_batch_size: int = option(16, "Pairs per reward-model step.")
    rm_max_length: int = option(256, "Tokens per (prompt, completion) pair for the reward model.")
    rm_threads: int = option(0, "torch threads for reward-model training (0: default).")
    # RL
    steps_per_round: int = option(2, "RL steps per round; each round ends with one candidate version on the canary.")
    max_version_lag: int = option(1, "Most trainer updates between the weights that sampled a batch and the weights it trains; staler batches are dropped.")
    prompts_per_step: int = option(4, "Prompts per RL step.")
    samples_per_prompt: int = option(4, "Samples per prompt (the GRPO group), >= 2.")
    live_fraction: float = option(0.5, "Share of a step's prompts from the newest live prompts; the rest replay older ones.")
    live_window: int = option(32, "How many of the most recently seen prompts count as live.")
    replay_capacity: int = option(1024, "Distinct prompts kept for replay.")
    max_tokens: int = option(48, "Tokens per RL sample.")
    temperature: float = option(1.0, "Sampling temperature of RL rollouts (> 0; the loss uses the same).")
    learning_rate: float = option(1e-5, "Policy learning rate (AdamW).")
    kl_coef: float = option(0.05, "KL penalty to the start checkpoint.")
    micro_batch_size: int = option(8, "Samples per forward/backward pass.")
    lora_rank: int = option(0, "LoRA rank (0: full fine-tuning). LoRA needs far less trainer memory (no reference copy, small optimizer state); pushes carry the merged weights.")
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / rank).")
    push_dtype: str = option("float32", "dtype of pushed weights (float32, bfloat16, float16).")
    # the canary
    canary_min_ratings: int = option(20, "Rated samples each of the candidate and the stable version needs before a decision.")
    canary_margin: float = option(0.05, "Roll back when the candidate's mean score (0-1) is below the stable version's by more than this.")
    canary_window_s: float = option(300.0, "Longest wait for ratings of a candidate.")
    canary_poll_s: float = option(2.0, "How often the ratings are read while judging.")
    canary_on_inconclusive: str = option("rollback", "Outcome when the window ends without enough ratings: rollback or promote.")
    # run
    keep_checkpoints: int = option(2, "Checkpoints kept in output_dir (older ones are deleted).")
    seed: int = option(0, "Seed for prompt draws, sampling seeds and torch.")
    device: str = option("cpu", "Torch device for training.")
    rpc_timeout_s: float = option(600.0, "Deadline of each Generate/Score/PushWeights call.")
    rpc_retries: int = option(3, "Retries (with backoff) on UNAVAILABLE.")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2: GRPO compares the samples of a prompt")
        if self.steps_per_round < 1 or self.max_version_lag < 0:
            raise ValueError("steps_per_round must be >= 1 and max_version_lag >= 0")
        if self.steps_per_round > self.max_version_lag + 1:
            raise ValueError(
                f"steps_per_round={self.steps_per_round} needs max_version_lag >= {self.steps_per_round - 1}: a round's "
                "batches are all sampled from the version serving at its start"
            )
        if not 0.0 <= self.live_fraction <= 1.0 or self.temperature <= 0:
            raise ValueError("live_fraction must be in [0, 1] and temperature > 0")
        if self.rm_min_new_pairs < 2 or self.keep_checkpoints < 1:
            raise ValueError("rm_min_new_pairs must be >= 2 (one is held out) and keep_checkpoints >= 1")
        self.canary()  # validates the canary settings

    def canary(self) -> CanarySettings:
        return CanarySettings(self.canary_min_ratings, self.canary_margin, self.canary_window_s, self.canary_poll_s,
                              self.canary_on_inconclusive)

    def refresh(self) -> RefreshSettings:
        return RefreshSettings(
            reward_address=self.reward_address, model_name=self.reward_model, base_model=self.rm_base_model,
            output_dir=Path(self.output_dir) / "reward-models", min_new_pairs=self.rm_min_new_pairs,
            replay_pairs=self.rm_replay_pairs, epochs=self.rm_epochs, learning_rate=self.rm_learning_rate,
            batch_size=self.rm_batch_size, max_length=self.rm_max_length, threads=self.rm_threads, seed=self.seed,
        )
