"""Typed dataclass configs filled from TOML/YAML files and CLI flags, strictly.

A config file and the command line fill the same dataclass: file values first, then the flags the
user actually typed. Unknown keys and wrong types are `KdpipeError`s that name the key, so a typo
never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from kdpipe.errors import KdpipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

C = TypeVar("C")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a `.toml`, `.yaml` or `.yml` file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise KdpipeError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise KdpipeError(
                    f"{path}: the top level must be a mapping of option names to values"
                )
            return data
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise KdpipeError(f"cannot parse config file {path}: {e}") from None
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        raise KdpipeError(f"cannot parse config file {path}: {e}") from None
    raise KdpipeError(f"config file {path} must end in .toml, .yaml or .yml")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to `tp` where lossless (int -> float, list -> tuple), else raise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except KdpipeError:
                continue
        raise KdpipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise KdpipeError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise KdpipeError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise KdpipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise KdpipeError(f"{where}: expected a table of options, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is type(None):
        if value is None:
            return None
        raise KdpipeError(f"{where}: expected nothing, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if tp is bool and not isinstance(value, bool):
        raise KdpipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise KdpipeError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise KdpipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build dataclass `cls` from `values`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KdpipeError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _check_type(value, hints[name], f"{where}.{name}") for name, value in values.items()
    }
    return cls(**kwargs)


def merge(cls: type[C], file_values: dict[str, Any], overrides: dict[str, Any]) -> C:
    """Config file values, then `overrides` (flags the user set; `None` means "not given")."""
    values = dict(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready values (paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field whose `help` text the CLI shows, so flags and config keys share one doc."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})
