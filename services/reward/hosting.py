"""The models this process serves, each with its batcher, from start-up to shutdown.

The servicer is created before the models load (the server must answer health
checks meanwhile), so it holds a `ModelHost` that is empty until `load` finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.reward import metrics
from services.reward.backend import RewardBackend
from services.reward.batcher import BatcherConfig, DynamicBatcher
from services.reward.registry import ModelSpec, build_models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostedModel:
    backend: RewardBackend
    batcher: DynamicBatcher


class ModelHost:
    """Name -> hosted model; `ready` turns true once every declared model has loaded."""

    def __init__(self, batching: BatcherConfig) -> None:
        self.batching = batching
        self.models: dict[str, HostedModel] = {}
        self.ready = False

    async def load(self, specs: Sequence[ModelSpec], device: str) -> None:
        # Loading reads weights for seconds: off the event loop, so health keeps answering.
        backends = await asyncio.to_thread(build_models, specs, device)
        self.attach(backends)

    def attach(self, backends: Sequence[RewardBackend]) -> None:
        """Wraps already-built backends in batchers (needs the running event loop)."""
        for backend in backends:
            batcher = DynamicBatcher(backend.name, backend.score, self.batching, metrics.batch_observer(backend.name))
            metrics.register_model(backend, batcher)
            self.models[backend.name] = HostedModel(backend, batcher)
            log.info("hosting model name=%s kind=%s version=%s", backend.name, backend.kind, backend.version)
        self.ready = True

    async def close(self) -> None:
        for hosted in self.models.values():
            await hosted.batcher.close()
