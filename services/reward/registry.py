"""From the models TOML to loaded reward backends (the format is documented in config.py).

Parsing is separate from loading so a bad file fails in milliseconds, before the
server binds, while loading weights happens later in the server's start-up hook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from services.reward.backend import KINDS, RewardBackend, check_device
from services.reward.rules import RulesConfig, RulesReward

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COMMON_KEYS = {"name", "kind", "description"}
_KIND_KEYS = {"similarity": {"path"}, "classifier": {"path"}}


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


DEFAULT_SPECS = (ModelSpec(name="similarity", kind="similarity"),)


def load_specs(models_file: str) -> tuple[ModelSpec, ...]:
    """Reads and validates the models file; an empty name means DEFAULT_SPECS."""
    if not models_file:
        return DEFAULT_SPECS
    path = Path(models_file)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelsFileError(f"models file {path}: {exc}") from exc
    return parse_specs(document, source=str(path), base_dir=path.parent)


def parse_specs(
    document: Mapping[str, Any], source: str = "models file", base_dir: Path = Path(".")
) -> tuple[ModelSpec, ...]:
    """Validates a parsed TOML document (`[[models]]` tables) into specs."""
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise ModelsFileError(f"{source}: unknown top-level keys {unknown}; declare models as [[models]] tables")
    tables = document.get("models")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ModelsFileError(f"{source}: expected at least one [[models]] table")
    specs: list[ModelSpec] = []
    for index, table in enumerate(tables):
        where = f"{source}: models[{index}]" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) else "")
        try:
            specs.append(_parse_one(table, base_dir))
        except ValueError as exc:
            raise ModelsFileError(f"{where}: {exc}") from exc
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelsFileError(f"{source}: model names must be unique; repeated: {duplicates}")
    return tuple(specs)


def _parse_one(table: Mapping[str, Any], base_dir: Path) -> ModelSpec:
    name, kind = table.get("name"), table.get("kind")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be 1-64 characters of letters, digits, '.', '_', '-', got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    description = table.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"description must be a string, got {description!r}")
    rest = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    if kind == "rules":
        return ModelSpec(name, kind, description, rules=RulesConfig.from_table(rest))
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
    return ModelSpec(name, kind, description, path=path)


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
