"""The gRPC face of the reward service: validate, hand items to the model's batcher, reply."""

from __future__ import annotations

import grpc

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.errors import NotFound, Unavailable, require
from services.reward.backend import RewardItem
from services.reward.config import RewardConfig
from services.reward.hosting import HostedModel, ModelHost

_KINDS = {
    "similarity": reward_pb2.REWARD_KIND_SIMILARITY,
    "classifier": reward_pb2.REWARD_KIND_CLASSIFIER,
    "rules": reward_pb2.REWARD_KIND_RULES,
}


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, config: RewardConfig, host: ModelHost) -> None:
        self.config, self.host = config, host

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        hosted = self._model(request.model)
        count, limit = len(request.items), self.config.max_items_per_request
        require(count > 0, "items is empty: send at least one prompt/completion pair")
        require(count <= limit, f"too many items: {count} > max_items_per_request={limit}")
        items = [self._item(index, item) for index, item in enumerate(request.items)]
        scores = await hosted.batcher.submit(items)
        backend = hosted.backend
        return reward_pb2.ScoreResponse(scores=scores, model=backend.name, model_version=backend.version)

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListModelsResponse:
        models = [
            reward_pb2.RewardModelInfo(
                name=b.name,
                version=b.version,
                kind=_KINDS[b.kind],
                description=b.description,
                uses_reference=b.uses_reference,
                max_batch_size=self.host.batching.max_batch_size,
            )
            for b in (hosted.backend for hosted in self.host.models.values())
        ]
        return reward_pb2.ListModelsResponse(models=models)

    def _model(self, name: str) -> HostedModel:
        if not self.host.ready:
            raise Unavailable("reward models are still loading; wait for the health service to report SERVING")
        hosted = self.host.models.get(name)
        if hosted is None:
            raise NotFound(f"no reward model named {name!r}; hosted models: {sorted(self.host.models)}")
        return hosted

    def _item(self, index: int, item: reward_pb2.ScoreItem) -> RewardItem:
        limit = self.config.max_text_chars
        reference = item.reference if item.HasField("reference") else None
        for field, text in (("prompt", item.prompt), ("completion", item.completion), ("reference", reference or "")):
            require(len(text) <= limit, f"items[{index}].{field} has {len(text)} characters > max_text_chars={limit}")
        return RewardItem(prompt=item.prompt, completion=item.completion, reference=reference)
