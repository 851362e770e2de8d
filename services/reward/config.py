"""Settings of the reward service: network, hosted models, batching and request limits.

Loaded by `load_config(RewardConfig, argv, "RLHF_REWARD_")`: defaults < `--config FILE`
< `RLHF_REWARD_<FIELD>` environment variables < `--field-name` flags.

Which reward models the process hosts is declared in a separate TOML file
(`--models-file`), because a model is a table of its own settings rather than one
flag. Its format, read and validated by `services.reward.registry`:

    [[models]]
    name = "similarity"      # the name callers pass in ScoreRequest.model
    kind = "similarity"      # similarity | classifier | rules
    path = ""                # checkpoint dir; "" = the packaged all-MiniLM-L6-v2
    description = "..."      # optional, shown by ListModels (every kind)

    [[models]]
    name = "tiny-rm"
    kind = "classifier"
    path = "checkpoints/rm"  # required: HF sequence-classification dir, num_labels = 1
    max_batch_size = 16       # optional per-model batching overrides (every kind):
    max_wait_ms = 2.0         #   max_batch_size, max_wait_ms, max_batch_tokens
    max_batch_tokens = 8192   #   (0 = no token budget for this model)

    [[models]]
    name = "length"
    kind = "rules"
    target_words = 60         # length term: 1 at 60 words, linearly down to 0 at 0 and at 120
    length_weight = 1.0       # scale of the length term (default 1.0)
    required_words = ["book"] # +required_weight for each listed word the completion contains
    required_weight = 1.0     # (default 1.0)
    banned_words = ["hate"]   # -banned_weight for each listed word the completion contains
    banned_weight = 1.0       # (default 1.0)
    case_sensitive = false    # word matching ignores case unless true (default false)

    [[ensembles]]
    name = "rm-ensemble"                # callers pass it in ScoreRequest.model
    members = ["tiny-rm", "length"]     # declared [[models]], each at its latest version
    aggregation = "mean_minus_std"      # mean | min | mean_minus_std
    k = 1.0                             # mean - k * std (default 1.0)

Relative paths are resolved against the models file's directory. Unknown keys, a
missing or duplicate name, an unknown kind, or a classifier without `path` stop the
service at start-up with a message naming the offending entry. An empty
`models_file` hosts one model, `similarity`, on the packaged MiniLM.

Models can also be loaded, given new versions and unloaded at runtime through
RewardAdminService (same keys, see reward.proto). Per-tenant quota overrides live in
`--quotas-file` (format in services/reward/quotas.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.server import ServingConfig


@dataclass(frozen=True)
class RewardConfig(ServingConfig):
    """Reward service: named reward models scoring prompt/completion pairs, batched across callers."""

    port: int = option(50052, "gRPC port.")
    metrics_port: int = option(9102, "Prometheus /metrics HTTP port (0 disables it).")
    models_file: str = option(
        "", "TOML file declaring the hosted reward models (see services/reward/config.py); empty = only 'similarity'."
    )
    device: str = option("cpu", "torch device the neural reward models run on: 'cpu', 'cuda' or 'cuda:N'.")
    torch_threads: int = option(
        0, "torch intra-op CPU threads for the neural models (0 = torch's default: one per core)."
    )
    max_batch_size: int = option(32, "Most items one model scores in one forward pass, gathered across callers.")
    max_wait_ms: float = option(
        5.0, "How long a batch waits for more items after its first item arrived, in milliseconds."
    )
    max_queue_items: int = option(
        4096, "Most items waiting per model; beyond it Score answers RESOURCE_EXHAUSTED instead of queueing."
    )
    max_batch_tokens: int = option(
        16384,
        "Most padded token positions (rows x longest row) one batch may hold, so one long text does not make a "
        "batch of short ones pay for its padding; an item longer than this runs alone. 0 = count items only.",
    )
    max_items_per_request: int = option(1024, "Most items one ScoreRequest may carry (a Compare pair counts 2).")
    max_text_chars: int = option(20000, "Longest prompt, completion or reference accepted, in characters.")
    keep_previous_versions: int = option(
        1,
        "Older versions of each model kept loaded (callers may pin them) after a newer one is published; "
        "older ones are unloaded once their in-flight requests finish.",
    )
    drain_timeout_s: float = option(
        60.0, "How long an unloaded or replaced version waits for its in-flight requests before it is closed anyway."
    )
    admin: bool = option(
        True, "Serve RewardAdminService (load, publish, unload models at runtime); authorize it with scope 'admin'."
    )
    model_root: str = option(
        "",
        "Directory that relative checkpoint paths in admin requests resolve against; when set, admin requests may "
        "only load checkpoints inside it. Empty = the working directory, no restriction.",
    )
    tenant_items_per_s: float = option(
        0.0, "Default per-tenant rate limit in item evaluations per second (items x models); 0 = unlimited."
    )
    tenant_burst_items: int = option(
        0, "Default per-tenant burst: item evaluations a tenant may spend at once; 0 = one second's worth."
    )
    tenant_max_concurrent_requests: int = option(
        0, "Default per-tenant cap on Score/Compare requests in flight; 0 = unlimited."
    )
    quotas_file: str = option(
        "", "TOML file with per-tenant overrides of the tenant_* limits (see services/reward/quotas.py)."
    )

    def __post_init__(self) -> None:
        # ValueError is what load_config turns into a usage error naming the flag.
        for name in ("max_batch_size", "max_queue_items", "max_items_per_request", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "torch_threads",
            "max_batch_tokens",
            "keep_previous_versions",
            "tenant_burst_items",
            "tenant_max_concurrent_requests",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tenant_items_per_s < 0:
            raise ValueError(f"tenant_items_per_s must be >= 0, got {self.tenant_items_per_s}")
        if self.drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be > 0, got {self.drain_timeout_s}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue_items < self.max_items_per_request:
            raise ValueError(
                f"max_queue_items ({self.max_queue_items}) must be >= max_items_per_request "
                f"({self.max_items_per_request}), or the largest allowed request could never be queued"
            )
        if not self.device.strip():
            raise ValueError("device must name a torch device such as 'cpu' or 'cuda'")
