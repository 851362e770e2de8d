"""Reward service metrics, declared together; the gRPC ones come from services.common.metrics.

Per model: what was scored, how full the batches were (the point of batching), how
long they took and how much is waiting, plus an info gauge carrying the version so
a dashboard can tell which weights produced a score.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.reward.backend import RewardBackend
from services.reward.batcher import BatchHook, DynamicBatcher

ITEMS = Counter("rlhf_reward_items", "Items scored, by model.", ("model",))
BATCH_SIZE = Histogram(
    "rlhf_reward_batch_size",
    "Items per batch a model scored in one forward pass.",
    ("model",),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_SECONDS = Histogram(
    "rlhf_reward_batch_seconds",
    "Time one batch took to score, in seconds.",
    ("model",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_ITEMS = Gauge("rlhf_reward_queue_items", "Items waiting to be batched, by model.", ("model",))
MODEL_INFO = Gauge(
    "rlhf_reward_model_info", "Hosted reward models (value 1) with version and kind.", ("model", "version", "kind")
)


def batch_observer(model: str) -> BatchHook:
    """The batcher's `on_batch` hook for `model`."""
    items, sizes, seconds = ITEMS.labels(model=model), BATCH_SIZE.labels(model=model), BATCH_SECONDS.labels(model=model)

    def observe(batch_size: int, elapsed_s: float) -> None:
        items.inc(batch_size)
        sizes.observe(batch_size)
        seconds.observe(elapsed_s)

    return observe


def register_model(backend: RewardBackend, batcher: DynamicBatcher) -> None:
    """Publishes the model's info and reads its queue length at scrape time."""
    MODEL_INFO.labels(model=backend.name, version=backend.version, kind=backend.kind).set(1)
    QUEUE_ITEMS.labels(model=backend.name).set_function(lambda: batcher.queued_items)
