"""Client-side metrics: how many replicas take calls, how far each policy replica lags.

The names keep their `rlhf_trainer_` prefix: the trainer is the process that exports them
(on its --metrics-port), and dashboards already read them under these names.
"""

from prometheus_client import Gauge

REPLICAS_IN_ROTATION = Gauge(
    "rlhf_trainer_replicas_in_rotation", "Replicas taking the trainer's calls now.", ("service",)
)
REPLICA_VERSION_LAG = Gauge(
    "rlhf_trainer_replica_version_lag",
    "Weight versions a policy replica is behind the trainer's (0: current).",
    ("replica",),
)
