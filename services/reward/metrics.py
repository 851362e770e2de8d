"""Reward service metrics, declared together; the gRPC ones come from services.common.metrics.

Per model: what was scored, how full the batches were in items and padded tokens (the
point of batching), how long they took and how much is waiting, plus an info gauge per
loaded version so a dashboard can tell which weights produced a score. Per tenant:
requests by outcome (served, refused over quota or with a full queue, failed) and
item evaluations charged, which is what quotas are about. Admin operations by outcome.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from services.reward.backend import RewardBackend
from services.reward.batcher import BatchHook, BatchReport

ITEMS = Counter("rlhf_reward_items", "Items scored, by model.", ("model",))
BATCH_SIZE = Histogram(
    "rlhf_reward_batch_size",
    "Items per batch a model scored in one forward pass.",
    ("model",),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_TOKENS = Histogram(
    "rlhf_reward_batch_padded_tokens",
    "Padded token positions (rows x longest row) per batch, for models with a token budget.",
    ("model",),
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
BATCH_SECONDS = Histogram(
    "rlhf_reward_batch_seconds",
    "Time one batch took to score, in seconds.",
    ("model",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_ITEMS = Gauge("rlhf_reward_queue_items", "Items waiting to be batched, by model (all versions).", ("model",))
MODEL_INFO = Gauge(
    "rlhf_reward_model_info", "Loaded reward model versions (value 1) with kind.", ("model", "version", "kind")
)
TENANT_REQUESTS = Counter(
    "rlhf_reward_tenant_requests",
    "Score and Compare requests by tenant and outcome (ok; overloaded: over quota or queue full; error).",
    ("tenant", "outcome"),
)
TENANT_ITEMS = Counter(
    "rlhf_reward_tenant_item_evaluations", "Item evaluations (items x models) charged to each tenant.", ("tenant",)
)
ADMIN_OPERATIONS = Counter(
    "rlhf_reward_admin_operations", "Admin RPCs by operation and outcome (ok, error).", ("operation", "outcome")
)


def batch_observer(model: str) -> BatchHook:
    """The batcher's `on_batch` hook for `model`."""
    items, sizes = ITEMS.labels(model=model), BATCH_SIZE.labels(model=model)
    tokens, seconds = BATCH_TOKENS.labels(model=model), BATCH_SECONDS.labels(model=model)

    def observe(report: BatchReport) -> None:
        items.inc(report.size)
        sizes.observe(report.size)
        seconds.observe(report.seconds)
        if report.padded_tokens:
            tokens.observe(report.padded_tokens)

    return observe


def model_loaded(model: str, queued_items: Callable[[], int]) -> None:
    """Reads the model's queue length (over all its versions) at scrape time."""
    QUEUE_ITEMS.labels(model=model).set_function(queued_items)


def model_unloaded(model: str) -> None:
    try:
        QUEUE_ITEMS.remove(model)
    except KeyError:
        pass


def version_loaded(backend: RewardBackend) -> None:
    MODEL_INFO.labels(model=backend.name, version=backend.version, kind=backend.kind).set(1)


def version_unloaded(backend: RewardBackend) -> None:
    try:
        MODEL_INFO.remove(backend.name, backend.version, backend.kind)
    except KeyError:
        pass
