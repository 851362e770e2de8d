"""Conversions between reward.proto messages and the service's plain types, in one place.

Both servicers (scoring and admin) use these, so an enum or a field means the same
thing in every RPC, and validation failures become INVALID_ARGUMENT messages naming
the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.v1 import reward_pb2
from services.common.errors import InvalidArgument
from services.reward.ensemble import PER_REQUEST_NAME, EnsembleSpec, MemberRef
from services.reward.hosting import ModelHost, ModelSlot
from services.reward.registry import ModelSpec, parse_model_table

KIND_TO_PROTO = {
    "similarity": reward_pb2.REWARD_KIND_SIMILARITY,
    "classifier": reward_pb2.REWARD_KIND_CLASSIFIER,
    "rules": reward_pb2.REWARD_KIND_RULES,
}
KIND_FROM_PROTO = {value: key for key, value in KIND_TO_PROTO.items()}
AGGREGATION_TO_PROTO = {
    "mean": reward_pb2.ENSEMBLE_AGGREGATION_MEAN,
    "min": reward_pb2.ENSEMBLE_AGGREGATION_MIN,
    "mean_minus_std": reward_pb2.ENSEMBLE_AGGREGATION_MEAN_MINUS_STD,
}
AGGREGATION_FROM_PROTO = {value: key for key, value in AGGREGATION_TO_PROTO.items()}


def optional(message: Any, field: str) -> Any:
    """The value of a proto3 `optional` field, or None when unset."""
    return getattr(message, field) if message.HasField(field) else None


def ensemble_from_proto(spec: reward_pb2.EnsembleSpec) -> EnsembleSpec:
    aggregation = AGGREGATION_FROM_PROTO.get(spec.aggregation)
    if aggregation is None:
        names = [reward_pb2.EnsembleAggregation.Name(v) for v in AGGREGATION_FROM_PROTO]
        raise InvalidArgument(f"ensemble.aggregation must be one of {names}, got {spec.aggregation}")
    if spec.HasField("k") and aggregation != "mean_minus_std":
        raise InvalidArgument("ensemble.k applies to ENSEMBLE_AGGREGATION_MEAN_MINUS_STD only")
    members = tuple(MemberRef(m.name, optional(m, "version")) for m in spec.members)
    k = spec.k if spec.HasField("k") else 1.0
    try:
        return EnsembleSpec(PER_REQUEST_NAME, members, aggregation, k)
    except ValueError as exc:
        raise InvalidArgument(f"ensemble: {exc}") from exc


def model_info(slot: ModelSlot) -> reward_pb2.RewardModelInfo:
    latest = slot.current
    backend, config = latest.backend, latest.batcher.config
    return reward_pb2.RewardModelInfo(
        name=slot.name,
        version=slot.latest,
        kind=KIND_TO_PROTO[slot.kind],
        description=backend.description,
        uses_reference=backend.uses_reference,
        max_batch_size=config.max_batch_size,
        loaded_versions=list(slot.versions),
        max_batch_tokens=config.max_batch_tokens if hasattr(backend, "token_lengths") else 0,
    )


def list_models(host: ModelHost) -> reward_pb2.ListModelsResponse:
    return reward_pb2.ListModelsResponse(
        models=[model_info(host.models[name]) for name in sorted(host.models)],
        ensembles=[
            reward_pb2.EnsembleInfo(
                name=e.name,
                members=[m.name for m in e.members],
                aggregation=AGGREGATION_TO_PROTO[e.aggregation],
                k=e.k,
                description=e.describe(),
            )
            for e in (host.ensembles[name] for name in sorted(host.ensembles))
        ],
    )


def model_spec(declaration: reward_pb2.ModelDeclaration, model_root: str = "") -> ModelSpec:
    """An admin declaration as the same table a models file holds, validated by the same parser."""
    kind = KIND_FROM_PROTO.get(declaration.kind)
    if kind is None:
        names = [reward_pb2.RewardKind.Name(v) for v in KIND_FROM_PROTO]
        raise InvalidArgument(f"model.kind must be one of {names}, got {declaration.kind}")
    table: dict[str, Any] = {"name": declaration.name, "kind": kind}
    if declaration.description:
        table["description"] = declaration.description
    if declaration.path:
        table["path"] = declaration.path
    for key in ("max_batch_size", "max_wait_ms", "max_batch_tokens"):
        if declaration.HasField(key):
            table[key] = getattr(declaration, key)
    if declaration.HasField("rules"):
        if kind != "rules":
            raise InvalidArgument("model.rules is only for REWARD_KIND_RULES")
        table.update(_rules_table(declaration.rules))
    root = Path(model_root) if model_root else Path.cwd()
    try:
        spec = parse_model_table(table, base_dir=root)
    except ValueError as exc:
        raise InvalidArgument(f"model ({declaration.name!r}): {exc}") from exc
    if model_root and spec.path is not None and not spec.path.is_relative_to(root.resolve()):
        raise InvalidArgument(f"model.path {spec.path} is outside the server's model_root {root.resolve()}")
    return spec


def _rules_table(rules: reward_pb2.RulesDeclaration) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if rules.target_words:
        table["target_words"] = rules.target_words
    for key in ("length_weight", "required_weight", "banned_weight"):
        if rules.HasField(key):
            table[key] = getattr(rules, key)
    if rules.required_words:
        table["required_words"] = list(rules.required_words)
    if rules.banned_words:
        table["banned_words"] = list(rules.banned_words)
    if rules.case_sensitive:
        table["case_sensitive"] = True
    return table
