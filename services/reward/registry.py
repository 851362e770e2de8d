"""From the models TOML to loaded reward backends (the format is documented in config.py).

Parsing is separate from loading so a bad file fails in milliseconds, before the
server binds, while loading weights happens later in the server's start-up hook.
The admin RPCs declare models with the same keys, so they go through the same checks.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.reward.backend import KINDS, RewardBackend, check_device
from services.reward.ensemble import AGGREGATIONS, EnsembleSpec, MemberRef
from services.reward.rules import RulesConfig, RulesReward

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BATCHING_KEYS = {"max_batch_size", "max_wait_ms", "max_batch_tokens"}
_COMMON_KEYS = {"name", "kind", "description"} | _BATCHING_KEYS
_KIND_KEYS = {"similarity": {"path"}, "classifier": {"path"}}
_ENSEMBLE_KEYS = {"name", "members", "aggregation", "k", "description"}


class ModelsFileError(ValueError):
    """The models file is unreadable or declares something invalid."""


@dataclass(frozen=True)
class ModelSpec:
    """One declared model: what to load, not yet loaded."""

    name: str
    kind: str
    description: str | None = None
    path: Path | None = None
    rules: RulesConfig | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    max_batch_tokens: int | None = None


@dataclass(frozen=True)
class Declarations:
    """Everything a models file declares."""

    models: tuple[ModelSpec, ...]
    ensembles: tuple[EnsembleSpec, ...] = ()


DEFAULT_SPECS = (ModelSpec(name="similarity", kind="similarity"),)


def load_declarations(models_file: str) -> Declarations:
    """Reads and validates the models file; an empty name means DEFAULT_SPECS and no ensembles."""
    if not models_file:
        return Declarations(DEFAULT_SPECS)
    path = Path(models_file)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelsFileError(f"models file {path}: {exc}") from exc
    return parse_declarations(document, source=str(path), base_dir=path.parent)


def load_specs(models_file: str) -> tuple[ModelSpec, ...]:
    """The models the file declares (see load_declarations)."""
    return load_declarations(models_file).models


def parse_declarations(
    document: Mapping[str, Any], source: str = "models file", base_dir: Path = Path(".")
) -> Declarations:
    """Validates a parsed TOML document (`[[models]]` and `[[ensembles]]` tables)."""
    models = parse_specs(document, source, base_dir)
    tables = document.get("ensembles", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ModelsFileError(f"{source}: declare ensembles as [[ensembles]] tables")
    model_names = {spec.name for spec in models}
    ensembles: list[EnsembleSpec] = []
    for index, table in enumerate(tables):
        where = f"{source}: ensembles[{index}]" + (
            f" ({table['name']!r})" if isinstance(table.get("name"), str) else ""
        )
        try:
            ensemble = parse_ensemble(table)
        except ValueError as exc:
            raise ModelsFileError(f"{where}: {exc}") from exc
        missing = sorted(m.name for m in ensemble.members if m.name not in model_names)
        if missing:
            raise ModelsFileError(f"{where}: members {missing} are not declared as [[models]]")
        ensembles.append(ensemble)
    names = [spec.name for spec in models] + [e.name for e in ensembles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelsFileError(f"{source}: model and ensemble names must be unique; repeated: {duplicates}")
    return Declarations(models, tuple(ensembles))


def parse_ensemble(table: Mapping[str, Any]) -> EnsembleSpec:
    """One [[ensembles]] table: name, members (model names), aggregation, k, description."""
    unknown = sorted(set(table) - _ENSEMBLE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {sorted(_ENSEMBLE_KEYS)}")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be 1-64 characters of letters, digits, '.', '_', '-', got {name!r}")
    members = table.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"members must be a list of model names, got {members!r}")
    aggregation = table.get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    k = table.get("k", 1.0)
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"k must be a number, got {k!r}")
    description = table.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"description must be a string, got {description!r}")
    return EnsembleSpec(name, tuple(MemberRef(m) for m in members), aggregation, float(k), description)


def parse_specs(
    document: Mapping[str, Any], source: str = "models file", base_dir: Path = Path(".")
) -> tuple[ModelSpec, ...]:
    """Validates the `[[models]]` tables of a parsed TOML document into specs."""
    unknown = sorted(set(document) - {"models", "ensembles"})
    if unknown:
        raise ModelsFileError(f"{source}: unknown top-level keys {unknown}; declare models as [[models]] tables")
    tables = document.get("models")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ModelsFileError(f"{source}: expected at least one [[models]] table")
    specs: list[ModelSpec] = []
    for index, table in enumerate(tables):
        where = f"{source}: models[{index}]" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) else "")
        try:
            specs.append(parse_model_table(table, base_dir))
        except ValueError as exc:
            raise ModelsFileError(f"{where}: {exc}") from exc
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelsFileError(f"{source}: model names must be unique; repeated: {duplicates}")
    return tuple(specs)


def parse_model_table(table: Mapping[str, Any], base_dir: Path) -> ModelSpec:
    """One [[models]] table (or an admin declaration in the same shape); ValueError says what is wrong."""
    name, kind = table.get("name"), table.get("kind")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be 1-64 characters of letters, digits, '.', '_', '-', got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    description = table.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"description must be a string, got {description!r}")
    batching = _batching(table)
    rest = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    if kind == "rules":
        return ModelSpec(name, kind, description, rules=RulesConfig.from_table(rest), **batching)
    unknown = sorted(set(rest) - _KIND_KEYS[kind])
    if unknown:
        allowed = sorted(_COMMON_KEYS | _KIND_KEYS[kind])
        raise ValueError(f"unknown keys {unknown} for kind {kind!r}; allowed: {allowed}")
    raw_path = rest.get("path", "")
    if not isinstance(raw_path, str):
        raise ValueError(f"path must be a string, got {raw_path!r}")
    if kind == "classifier" and not raw_path:
        raise ValueError("a classifier needs path = the checkpoint directory")
    path = (base_dir / raw_path).resolve() if raw_path else None
    return ModelSpec(name, kind, description, path=path, **batching)


def _batching(table: Mapping[str, Any]) -> dict[str, Any]:
    """Per-model overrides of the server's batching settings."""
    values: dict[str, Any] = {}
    for key in ("max_batch_size", "max_batch_tokens"):
        if key in table:
            value = table[key]
            minimum = 1 if key == "max_batch_size" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
            values[key] = value
    if "max_wait_ms" in table:
        value = table["max_wait_ms"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 60_000:
            raise ValueError(f"max_wait_ms must be a number in [0, 60000), got {value!r}")
        values["max_wait_ms"] = float(value)
    return values


def build_model(spec: ModelSpec, device: str = "cpu") -> RewardBackend:
    """Loads one backend. torch/transformers are imported only for the kinds that need them."""
    if spec.kind == "rules":
        assert spec.rules is not None
        return RulesReward(spec.name, spec.rules, spec.description)
    check_device(device)
    if spec.kind == "similarity":
        from services.reward.similarity import SimilarityReward

        return SimilarityReward(spec.name, spec.path, device, spec.description)
    from services.reward.classifier import ClassifierReward

    assert spec.path is not None
    return ClassifierReward(spec.name, spec.path, device, spec.description)


def build_models(specs: Sequence[ModelSpec], device: str = "cpu") -> list[RewardBackend]:
    return [build_model(spec, device) for spec in specs]
