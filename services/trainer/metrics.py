"""Trainer metrics for Prometheus (exported when --metrics-port is set)."""

from prometheus_client import Gauge, Histogram

STEP = Gauge("rlhf_trainer_step", "Optimizer steps completed.")
WEIGHT_VERSION = Gauge("rlhf_trainer_weight_version", "Policy weight version after the last push.")
REWARD_MEAN = Gauge("rlhf_trainer_reward_mean", "Mean reward of the last step's samples.")
REWARD_STD = Gauge("rlhf_trainer_reward_std", "Reward standard deviation of the last step's samples.")
KL = Gauge("rlhf_trainer_kl", "Mean per-token KL to the reference policy (k3).")
LOSS = Gauge("rlhf_trainer_loss", "Last step's loss.")
PHASE_SECONDS = Histogram(
    "rlhf_trainer_phase_seconds",
    "Time per step phase (generate, score, train, push).",
    ("phase",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
)


def observe_step(record: dict) -> None:
    STEP.set(record["step"])
    WEIGHT_VERSION.set(record["weight_version"])
    REWARD_MEAN.set(record["reward_mean"])
    REWARD_STD.set(record["reward_std"])
    KL.set(record["kl"])
    LOSS.set(record["loss"])
    for phase, seconds in record["seconds"].items():
        PHASE_SECONDS.labels(phase).observe(seconds)
