"""Configuration: defaults, then a TOML file, then `CORRAL_*` environment
variables, then command-line flags, merged once into a frozen dataclass.

A program describes its settings as a frozen dataclass whose fields carry a
`help` text in their metadata (see `setting`); `load` builds the argument
parser from it. Modules never read `os.environ` themselves: entry points pass
the environment in.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting with a value of the wrong type or an unknown name."""


def setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A dataclass field with its help text (and, optionally, its flag name)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def _flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def _convert(name: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "":
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float, str):
            if kind is int and isinstance(value, float):
                raise ValueError(value)
            return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise ConfigError(f"{name}: unsupported setting type {kind}")


def load(
    cls: type[T],
    argv: Sequence[str] | None,
    env: Mapping[str, str],
    *,
    prog: str,
    description: str,
    env_prefix: str,
) -> T:
    """Parse `argv` into an instance of the dataclass `cls`."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="a TOML file of settings (keys are the flag names)")
    for field in fields:
        kind = hints[field.name]
        env_name = env_prefix + field.name.upper()
        help_text = f"{field.metadata.get('help', '')} (env {env_name}; default {field.default!r})"
        if kind is bool:
            parser.add_argument(
                _flag(field),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(_flag(field), dest=field.name, default=None, help=help_text)
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
        known = {f.name for f in fields}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                parser.error(f"--config {args.config}: unknown setting {key!r}")
            values[name] = value
    for field in fields:
        env_name = env_prefix + field.name.upper()
        if env_name in env:
            values[field.name] = env[env_name]
        cli_value = getattr(args, field.name)
        if cli_value is not None:
            values[field.name] = cli_value
    try:
        converted = {name: _convert(name, hints[name], value) for name, value in values.items()}
        return cls(**converted)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
