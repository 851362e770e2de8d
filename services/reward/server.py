"""The gRPC faces of the reward service: validate, admit the tenant, score, reply.

`RewardServicer` (scope "score") scores and compares; `RewardAdminServicer` (scope
"admin") changes what is hosted. Both are thin: the logic lives in `Scorer`,
`ModelHost` and `TenantQuotas`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.common.errors import InvalidArgument, require
from services.common.tenancy import DEFAULT_TENANT, tenant_of
from services.reward import metrics
from services.reward.backend import RewardItem
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.messages import ensemble_from_proto, list_models, model_info, model_spec, optional
from services.reward.overload import RETRY_AFTER_KEY, Overloaded
from services.reward.quotas import TenantQuotas
from services.reward.registry import ModelSpec
from services.reward.scoring import Plan, Scorer

log = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def _tenant(context: grpc.aio.ServicerContext | None) -> str:
    return DEFAULT_TENANT if context is None else tenant_of(context)


def _accounted(handler: Handler) -> Handler:
    """Counts the request per tenant and, when refused for load, puts the retry hint in trailing metadata."""

    @functools.wraps(handler)
    async def wrapper(self: RewardServicer, request: Any, context: grpc.aio.ServicerContext | None) -> Any:
        tenant = _tenant(context)
        try:
            reply = await handler(self, request, context, tenant)
        except Overloaded as exc:
            metrics.TENANT_REQUESTS.labels(tenant=tenant, outcome="overloaded").inc()
            if context is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(exc.retry_after_ms)),))
            log.info("refused tenant=%s reason=%s", tenant, exc)
            raise
        except BaseException:
            metrics.TENANT_REQUESTS.labels(tenant=tenant, outcome="error").inc()
            raise
        metrics.TENANT_REQUESTS.labels(tenant=tenant, outcome="ok").inc()
        return reply

    return wrapper  # type: ignore[return-value]


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, config: RewardConfig, host: ModelHost, quotas: TenantQuotas | None = None) -> None:
        self.config, self.host = config, host
        self.scorer = Scorer(host)
        self.quotas = quotas or TenantQuotas()

    @_accounted
    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext, tenant: str = DEFAULT_TENANT
    ) -> reward_pb2.ScoreResponse:
        plan = self._plan(request)
        count, limit = len(request.items), self.config.max_items_per_request
        require(count > 0, "items is empty: send at least one prompt/completion pair")
        require(count <= limit, f"too many items: {count} > max_items_per_request={limit}")
        items = [
            self._item(f"items[{i}]", item.prompt, item.completion, optional(item, "reference"))
            for i, item in enumerate(request.items)
        ]
        with self._admitted(tenant, plan, count):
            result = await self.scorer.score(plan, items, whiten=request.whiten)
        reply = reward_pb2.ScoreResponse(scores=result.scores, model=result.model, model_version=result.version)
        if result.whitened is not None:
            reply.whitened_scores.extend(result.whitened)
        if request.return_member_scores:
            for member in result.members:
                reply.members.add(
                    model=member.model,
                    model_version=member.version,
                    scores=member.scores,
                    whitened_scores=member.whitened or [],
                )
        return reply

    @_accounted
    async def Compare(
        self, request: reward_pb2.CompareRequest, context: grpc.aio.ServicerContext, tenant: str = DEFAULT_TENANT
    ) -> reward_pb2.CompareResponse:
        plan = self._plan(request)
        count, limit = 2 * len(request.pairs), self.config.max_items_per_request
        require(count > 0, "pairs is empty: send at least one pair of completions")
        require(count <= limit, f"too many pairs: {count // 2} pairs = {count} items > max_items_per_request={limit}")
        prompts, a, b, references = [], [], [], []
        for i, pair in enumerate(request.pairs):
            reference = optional(pair, "reference")
            self._item(f"pairs[{i}]", pair.prompt, pair.completion_a, reference, completion_field="completion_a")
            self._item(f"pairs[{i}]", pair.prompt, pair.completion_b, None, completion_field="completion_b")
            prompts.append(pair.prompt)
            a.append(pair.completion_a)
            b.append(pair.completion_b)
            references.append(reference)
        with self._admitted(tenant, plan, count):
            probabilities, scores_a, scores_b, result = await self.scorer.compare(plan, prompts, a, b, references)
        return reward_pb2.CompareResponse(
            prob_a_preferred=probabilities,
            scores_a=scores_a,
            scores_b=scores_b,
            model=result.model,
            model_version=result.version,
        )

    async def ListModels(
        self, request: reward_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListModelsResponse:
        return list_models(self.host)

    async def GetModelStats(
        self, request: reward_pb2.GetModelStatsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.GetModelStatsResponse:
        self.host.resolve(request.model)  # Unavailable while loading, NotFound for unknown names
        slot = self.host.models[request.model]
        reply = reward_pb2.GetModelStatsResponse(model=slot.name)
        for version, hosted in slot.versions.items():
            stats = hosted.stats.snapshot()
            reply.versions.add(
                version=version,
                count=stats.count,
                mean=stats.mean,
                std=stats.std,
                min=stats.min,
                max=stats.max,
                latest=version == slot.latest,
            )
        return reply

    def _plan(self, request: reward_pb2.ScoreRequest | reward_pb2.CompareRequest) -> Plan:
        if request.model and request.HasField("ensemble"):
            raise InvalidArgument("set either model or ensemble, not both")
        ensemble = ensemble_from_proto(request.ensemble) if request.HasField("ensemble") else None
        return self.scorer.plan(request.model, optional(request, "model_version"), ensemble)

    @contextmanager
    def _admitted(self, tenant: str, plan: Plan, items: int) -> Iterator[None]:
        """Holds the tenant's quota for the request; an item costs one evaluation per model it goes through."""
        evaluations = items * plan.evaluations_per_item
        with self.quotas.admit(tenant, evaluations):
            metrics.TENANT_ITEMS.labels(tenant=tenant).inc(evaluations)
            yield

    def _item(
        self,
        where: str,
        prompt: str,
        completion: str,
        reference: str | None,
        completion_field: str = "completion",
    ) -> RewardItem:
        limit = self.config.max_text_chars
        for field, text in (("prompt", prompt), (completion_field, completion), ("reference", reference or "")):
            require(len(text) <= limit, f"{where}.{field} has {len(text)} characters > max_text_chars={limit}")
        return RewardItem(prompt=prompt, completion=completion, reference=reference)


def _admin(operation: str) -> Callable[[Handler], Handler]:
    """Counts admin operations by outcome."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                reply = await handler(self, request, context)
            except BaseException:
                metrics.ADMIN_OPERATIONS.labels(operation=operation, outcome="error").inc()
                raise
            metrics.ADMIN_OPERATIONS.labels(operation=operation, outcome="ok").inc()
            return reply

        return wrapper  # type: ignore[return-value]

    return decorate


class RewardAdminServicer(reward_pb2_grpc.RewardAdminServiceServicer):
    def __init__(self, config: RewardConfig, host: ModelHost) -> None:
        self.config, self.host = config, host

    @_admin("load")
    async def LoadModel(
        self, request: reward_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.LoadModelResponse:
        slot = await self.host.load_model(self._spec(request.model))
        return reward_pb2.LoadModelResponse(model=model_info(slot))

    @_admin("publish")
    async def PublishVersion(
        self, request: reward_pb2.PublishVersionRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.PublishVersionResponse:
        result = await self.host.publish(self._spec(request.model), optional(request, "expected_version"))
        return reward_pb2.PublishVersionResponse(
            model=result.model,
            version=result.version,
            previous_version=result.previous_version,
            changed=result.changed,
            loaded_versions=result.loaded_versions,
        )

    @_admin("unload")
    async def UnloadModel(
        self, request: reward_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.UnloadModelResponse:
        self.host.require_ready()
        unloaded = await self.host.unload(request.model, optional(request, "version"))
        return reward_pb2.UnloadModelResponse(unloaded_versions=unloaded)

    def _spec(self, declaration: reward_pb2.ModelDeclaration) -> ModelSpec:
        self.host.require_ready()
        return model_spec(declaration, self.config.model_root)
