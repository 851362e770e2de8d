"""Typed configuration: frozen dataclasses filled from a TOML file, the environment and flags.

Precedence (lowest to highest): field default < `--config FILE` (TOML) < environment
variable `<PREFIX><FIELD_NAME_UPPER>` < command-line flag `--field-name`. Every field
documents itself through `option(..., help=...)`, which becomes the flag's help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text shown by --help."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata={"help": help})


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """Returns (python type, optional) for a field annotation such as `int | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])[0], True
    if origin is tuple:
        return tuple, False
    return annotation, False


def _convert(raw: Any, kind: type, name: str) -> Any:
    if raw is None:
        return None
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{name}: expected a boolean (true/false), got {raw!r}")
    if kind is tuple:
        if isinstance(raw, (list, tuple)):
            return tuple(str(x) for x in raw)
        return tuple(x.strip() for x in str(raw).split(",") if x.strip())
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc


def load_config(cls: type[T], argv: list[str] | None = None, env_prefix: str = "", prog: str | None = None) -> T:
    """Builds `cls` from defaults, an optional TOML file, environment and flags."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML file with field values (flags and environment override it)")
    for f in fields:
        kind, _ = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        env = env_prefix + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} [env {env}; default {f.default!r}]"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text, metavar=kind.__name__.upper())
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    if args.config is not None:
        with open(args.config, "rb") as handle:
            from_file = tomllib.load(handle)
        unknown = set(from_file) - {f.name for f in fields}
        if unknown:
            parser.error(f"{args.config}: unknown settings {sorted(unknown)}")
        values.update(from_file)
    for f in fields:
        env = env_prefix + f.name.upper()
        if env in os.environ:
            values[f.name] = os.environ[env]
        flag_value = getattr(args, f.name)
        if flag_value is not None:
            values[f.name] = flag_value
    try:
        converted = {name: _convert(raw, _scalar_type(hints[name])[0], name) for name, raw in values.items()}
        config = cls(**converted)
    except ValueError as exc:
        parser.error(str(exc))
    return config


def describe(config: Any) -> str:
    """One `key=value` line per field, for the start-up log."""
    return "\n".join(f"  {f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config))
