"""Trainer metrics for Prometheus (exported when --metrics-port is set)."""

from prometheus_client import Gauge, Histogram

STEP = Gauge("rlhf_trainer_step", "Optimizer steps completed.")
WEIGHT_VERSION = Gauge("rlhf_trainer_weight_version", "Policy weight version after the last push.")
REWARD_MEAN = Gauge("rlhf_trainer_reward_mean", "Mean reward of the last step's samples.")
REWARD_STD = Gauge("rlhf_trainer_reward_std", "Reward standard deviation of the last step's samples.")
KL = Gauge("rlhf_trainer_kl", "Mean per-token KL to the reference policy (the configured estimator).")
LOSS = Gauge("rlhf_trainer_loss", "Last step's loss.")
ENTROPY = Gauge("rlhf_trainer_entropy", "Mean per-token entropy of the policy on the last step's samples (nats).")
POLICY_VERSION_LAG = Gauge(
    "rlhf_trainer_policy_version_lag", "Weight versions between the trainer's weights and the oldest sample of the last step."
)
SAMPLE_STALENESS = Histogram(
    "rlhf_trainer_sample_staleness",
    "Per used sample: weight versions between the weights that sampled it and the trainer's.",
    buckets=(0, 1, 2, 3, 4, 8, 16),
)
REPLICAS_IN_ROTATION = Gauge("rlhf_trainer_replicas_in_rotation", "Replicas taking the trainer's calls now.", ("service",))
REPLICA_VERSION_LAG = Gauge(
    "rlhf_trainer_replica_version_lag", "Weight versions a policy replica is behind the trainer's (0: current).", ("replica",)
)
PHASE_SECONDS = Histogram(
    "rlhf_trainer_phase_seconds",
    "Time per step phase (generate, score, train, push; wait in async mode).",
    ("phase",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
)


def observe_step(record: dict, staleness: list[int]) -> None:
    STEP.set(record["step"])
    WEIGHT_VERSION.set(record["weight_version"])
    REWARD_MEAN.set(record["reward_mean"])
    REWARD_STD.set(record["reward_std"])
    KL.set(record["kl"])
    LOSS.set(record["loss"])
    ENTROPY.set(record["entropy"])
    POLICY_VERSION_LAG.set(record["policy_version_lag"])
    for value in staleness:
        SAMPLE_STALENESS.observe(value)
    for phase, seconds in record["seconds"].items():
        PHASE_SECONDS.labels(phase).observe(seconds)
