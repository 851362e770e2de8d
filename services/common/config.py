"""Typed configuration: frozen dataclasses filled from a TOML file, the environment and flags.

A config is a frozen dataclass whose fields are settings or sections (fields that are
themselves frozen dataclasses, such as `sampling: Sampling`). Each setting has a path:
`max_tokens` at the top, `sampling.max_tokens` inside a section. The path names it
everywhere:

- flag: `--sampling.max-tokens 64` (a dot between section and field, dashes inside names);
- TOML: `[sampling]` then `max_tokens = 64` (a table per section);
- environment: `<PREFIX>SAMPLING__MAX_TOKENS=64` (upper case, sections separated by `__`,
  a double underscore, because names themselves contain single underscores).

Precedence (lowest to highest): field default < `--config FILE` (TOML) < environment
variable < command-line flag. Every setting documents itself through
`option(..., help=...)`, which becomes the flag's help text. A section's default is the
instance the composing config gives (so one section class can carry different defaults
in two programs); what the sources set replaces fields of that instance.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
ENV_SECTION_SEPARATOR = "__"


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text shown by --help."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata={"help": help})


def section(default: Any, help: str) -> Any:
    """A field holding a section (a frozen dataclass instance) with the defaults this config wants."""
    if not (dataclasses.is_dataclass(default) and not isinstance(default, type)):
        raise TypeError("a section default is a dataclass instance")
    return dataclasses.field(default=default, metadata={"help": help, "section": True})


@dataclasses.dataclass(frozen=True)
class _Setting:
    path: tuple[str, ...]  # ("sampling", "max_tokens")
    kind: type
    default: Any
    help: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + ".".join(part.replace("_", "-") for part in self.path)

    @property
    def dest(self) -> str:
        return ENV_SECTION_SEPARATOR.join(self.path)

    def env(self, prefix: str) -> str:
        return prefix + ENV_SECTION_SEPARATOR.join(part.upper() for part in self.path)


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """Returns (python type, optional) for a field annotation such as `int | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])[0], True
    if origin is tuple:
        return tuple, False
    return annotation, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name} needs a default")


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _settings(cls: type, defaults: Any = None, prefix: tuple[str, ...] = ()) -> Iterator[_Setting]:
    """Every leaf setting of `cls`, depth first, with the default the composing config gives it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        kind, _ = _scalar_type(hints[f.name])
        if _is_section(kind):
            yield from _settings(kind, default, prefix + (f.name,))
        else:
            yield _Setting(prefix + (f.name,), kind, default, f.metadata.get("help", ""))


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


def _flatten_toml(
    table: dict,
    known: dict[tuple[str, ...], _Setting],
    sections: set[tuple[str, ...]],
    source: str,
    prefix: tuple[str, ...] = (),
) -> dict[tuple[str, ...], Any]:
    """{path: raw value} from a TOML document; refuses keys and tables the config does not have."""
    values: dict[tuple[str, ...], Any] = {}
    where = f"[{'.'.join(prefix)}]" if prefix else "the top level"
    for key, raw in table.items():
        path = prefix + (key,)
        dotted = ".".join(path)
        if path in sections:
            if not isinstance(raw, dict):
                raise ValueError(f"{source}: {dotted} is a section: write it as a table [{dotted}]")
            values.update(_flatten_toml(raw, known, sections, source, path))
        elif path in known:
            if isinstance(raw, dict):
                raise ValueError(f"{source}: {dotted} is a setting, not a table")
            values[path] = raw
        else:
            here = sorted(
                {p[len(prefix)] for p in (*known, *sections) if p[: len(prefix)] == prefix and len(p) > len(prefix)}
            )
            raise ValueError(f"{source}: unknown setting {dotted!r} at {where} (known there: {', '.join(here)})")
    return values


def _build(cls: type, base: Any, values: dict[tuple[str, ...], Any]) -> Any:
    """`base` (an instance of cls, or None for cls's defaults) with `values` ({relative path: converted}) set."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, _ = _scalar_type(hints[f.name])
        inner = {path[1:]: v for path, v in values.items() if path[0] == f.name and len(path) > 1}
        if _is_section(kind) and inner:
            default = getattr(base, f.name) if base is not None else _default(f)
            kwargs[f.name] = _build(kind, default, inner)
        elif (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
    if base is None:
        return cls(**kwargs)
    return dataclasses.replace(base, **kwargs) if kwargs else base


def load_config(cls: type[T], argv: list[str] | None = None, env_prefix: str = "", prog: str | None = None) -> T:
    """Builds `cls` from defaults, an optional TOML file, environment and flags."""
    settings = list(_settings(cls))
    known = {s.path: s for s in settings}
    sections = {s.path[:i] for s in settings for i in range(1, len(s.path))}
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file with field values, a [table] per section (flags and environment override it)",
    )
    groups: dict[tuple[str, ...], Any] = {}
    for s in settings:
        group = parser
        if len(s.path) > 1:
            key = s.path[:-1]
            if key not in groups:
                groups[key] = parser.add_argument_group(f"[{'.'.join(key)}]")
            group = groups[key]
        help_text = f"{s.help} [env {s.env(env_prefix)}; default {s.default!r}]".replace("%", "%%")
        if s.kind is bool:
            group.add_argument(s.flag, dest=s.dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(s.flag, dest=s.dest, default=None, help=help_text, metavar=s.kind.__name__.upper())
    args = parser.parse_args(argv)

    try:
        raw: dict[tuple[str, ...], Any] = {}
        if args.config is not None:
            with open(args.config, "rb") as handle:
                raw.update(_flatten_toml(tomllib.load(handle), known, sections, str(args.config)))
        for s in settings:
            env = s.env(env_prefix)
            if env in os.environ:
                raw[s.path] = os.environ[env]
            flag_value = getattr(args, s.dest)
            if flag_value is not None:
                raw[s.path] = flag_value
        converted = {path: _convert(value, known[path].kind, ".".join(path)) for path, value in raw.items()}
        config = _build(cls, None, converted)
    except ValueError as exc:
        parser.error(str(exc))
    return config


def describe(config: Any, prefix: str = "") -> str:
    """One `key=value` line per setting (sections as `section.key=value`), for the start-up log."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines.append(describe(value, f"{prefix}{f.name}."))
        else:
            lines.append(f"  {prefix}{f.name}={value!r}")
    return "\n".join(lines)


def build(cls: type[T], settings: dict[str, Any] | None = None) -> T:
    """`cls` from its defaults with `settings` ({"sampling.max_tokens": 64, "steps": 3}) set, for code and tests.

    Values are used as given (no conversion from strings); a path the config does not have
    raises ValueError, as the config's own checks do.
    """
    settings = settings or {}
    known = {s.dotted for s in _settings(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no settings {unknown}")
    return _build(cls, None, {tuple(key.split(".")): value for key, value in settings.items()})


def env_names(cls: type, env_prefix: str) -> dict[str, str]:
    """{environment variable: dotted setting path} of every setting of `cls` (for checking deploy files)."""
    return {s.env(env_prefix): s.dotted for s in _settings(cls)}


def to_flags(config: Any) -> list[str]:
    """The flags that make `load_config` build `config` again (to start a program as a subprocess)."""
    flags = []
    for s in _settings(type(config), config):
        value = s.default  # _settings reads the values of `config`
        if s.kind is bool:
            flags.append(s.flag if value else "--no-" + s.flag[2:])
        elif value is not None:
            flags.append(f"{s.flag}={','.join(value) if isinstance(value, tuple) else value}")
    return flags
