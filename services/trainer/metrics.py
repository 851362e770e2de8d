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
    "rlhf_trainer_policy_version_lag",
    "Weight versions between the trainer's weights and the oldest sample of the last step.",
)
SAMPLE_STALENESS = Histogram(
    "rlhf_trainer_sample_staleness",
    "Per used sample: weight versions between the weights that sampled it and the trainer's.",
    buckets=(0, 1, 2, 3, 4, 8, 16),
)
SAMPLING_TEMPERATURE = Gauge("rlhf_trainer_sampling_temperature", "Temperature that sampled the last step's batch.")
# per task ("all": the whole batch; a task's name in multi-task runs)
DISTINCT_N = Gauge(
    "rlhf_trainer_distinct_n",
    "Distinct n-grams / all n-grams of a prompt's completions, mean over the last step's groups.",
    ("task",),
)
ZERO_SIGNAL_GROUPS = Gauge(
    "rlhf_trainer_zero_signal_group_share",
    "Share of the last step's groups whose rewards are all equal (no GRPO signal).",
    ("task",),
)
TASK_REWARD_MEAN = Gauge(
    "rlhf_trainer_task_reward_mean", "Mean raw reward of the last step's samples of a task.", ("task",)
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
    if "temperature" in record:
        SAMPLING_TEMPERATURE.set(record["temperature"])
        DISTINCT_N.labels("all").set(record["distinct_n"])
        ZERO_SIGNAL_GROUPS.labels("all").set(record["zero_signal_groups"])
    for task, values in record.get("tasks", {}).items():
        DISTINCT_N.labels(task).set(values["distinct_n"])
        ZERO_SIGNAL_GROUPS.labels(task).set(values["zero_signal_groups"])
        TASK_REWARD_MEAN.labels(task).set(values["reward_mean"])
    for value in staleness:
        SAMPLE_STALENESS.observe(value)
    for phase, seconds in record["seconds"].items():
        PHASE_SECONDS.labels(phase).observe(seconds)
