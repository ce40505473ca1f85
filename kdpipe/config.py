"""Typed dataclass configs filled from TOML/YAML files and CLI flags, strictly.

A config file and the command line fill the same dataclass: file values first, then the flags the
user actually typed. Unknown keys and wrong types are `KdpipeError`s that name the key, so a typo
never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from kdpipe.errors import KdpipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

C = TypeVar("C")


def shipped_configs() -> list[str]:
    """Names of the config files shipped in the package's `kdpipe/configs/` (package data):
    pipelines (`quickstart`, `full`) and sweeps (`sweep-*`)."""
    folder = resources.files("kdpipe") / "configs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def find_config_file(source: str | Path) -> Path:
    """`source` if it is a file; else the shipped config it names, by name (`sweep-resnet`) or by
    the path it has in a checkout (`configs/sweep-resnet.toml`, from before the sweep files
    moved into the package), so one command works from a checkout and after `pip install`."""
    path = Path(source)
    if path.exists():
        return path
    name = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    if name in shipped_configs():
        return Path(str(resources.files("kdpipe") / "configs" / f"{name}.toml"))
    return path  # read_config_file says it is missing


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
    if origin is typing.Annotated:
        partial = next((m for m in tp.__metadata__ if isinstance(m, Partial)), None)
        if partial is not None:
            return check_partial(partial, value, where)
        return _check_type(value, args[0], where)
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
    hints = typing.get_type_hints(cls, include_extras=True)
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


def merge(cls: type[C], file_values: dict[str, Any], overrides: dict[str, Any],
          where: str = "config") -> C:
    """Config file values, then `overrides` (flags the user set; `None` means "not given")."""
    values = dict(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=where)


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


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
           result: bool = True, short: str | None = None, flag: str | None = None,
           read_by: tuple[str, ...] = ()) -> Any:
    """A dataclass field whose `help` text the CLI shows, so flags and config keys share one doc.

    `result=False` marks a setting that changes where or how a run goes, never its numbers (the
    progress bar, the run folder, threads): resume checks, sweep cells and pipeline stage hashes
    leave it out (`results_only`). `short` is how the option appears in a sweep cell's name
    (`T` for temperature: `kd-T4-...`; "" for the bare value). `flag` is the command-line name
    where it is not the field's (`--import` for the field `imports`, a Python keyword).
    `read_by` names the distillation methods that read the option (`Method.reads`).
    """
    metadata = {"help": help, "result": result, "short": short, "flag": flag, "read_by": read_by}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def result_fields(cls: Any) -> frozenset[str]:
    """The fields of config dataclass `cls` (a class or an instance) that can change a result."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("result", True))


def not_result_fields(cls: Any) -> frozenset[str]:
    """The fields marked `option(..., result=False)`: where and how a run goes, not its numbers."""
    return frozenset(f.name for f in dataclasses.fields(cls) if not f.metadata.get("result", True))


def results_only(config: Any, cls: Any = None) -> dict[str, Any]:
    """`to_dict(config)` without the `result=False` fields: what decides the run's numbers, the
    key of resume checks, sweep cells and pipeline stages. `config` may already be a dict of
    `cls`'s fields."""
    values = config if isinstance(config, dict) else to_dict(config)
    skip = not_result_fields(cls if cls is not None else config)
    return {k: v for k, v in values.items() if k not in skip}


@dataclasses.dataclass(frozen=True)
class Partial:
    """Type metadata: a table of some of `cls`'s options, checked key by key and type by type
    when the file loads, e.g. a pipeline's `[train]` (`Annotated[dict, Partial(TrainConfig)]`).
    `exclude` names options the surrounding config sets itself."""

    cls: Any
    exclude: tuple[str, ...] = ()


def check_partial(spec: Partial, values: Any, where: str) -> dict[str, Any]:
    """`values` type-checked against `spec.cls`'s fields; unknown or excluded keys are errors."""
    if not isinstance(values, dict):
        raise KdpipeError(f"{where}: expected a table of options, got {values!r}")
    hints = typing.get_type_hints(spec.cls)
    known = {f.name for f in dataclasses.fields(spec.cls) if f.init} - set(spec.exclude)
    unknown = sorted(set(values) - known)
    if unknown:
        set_elsewhere = sorted(set(unknown) & set(spec.exclude))
        why = (f" ({', '.join(set_elsewhere)} set by the surrounding config)"
               if set_elsewhere else "")
        raise KdpipeError(f"{where}: unknown option(s) {', '.join(unknown)}{why}; known: "
                          f"{', '.join(sorted(known))}")
    return {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in values.items()}


def comma_list(text: str | list[Any], item: type, flag: str) -> list[Any]:
    """"1,32" -> [1, 32]: the one parser of comma-separated flag values (a list passes through,
    its items converted). Empty items are dropped; order and repeats are kept."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    values = [str(p).strip() for p in parts if str(p).strip()]
    if not values:
        raise KdpipeError(f"{flag} is empty; give comma-separated values like "
                          f"{'1,32' if item in (int, float) else 'a,b'}")
    try:
        return [item(v) for v in values]
    except ValueError:
        kind = {int: "integers", float: "numbers"}.get(item, "values")
        raise KdpipeError(f"{flag} takes comma-separated {kind} like "
                          f"{'1,32' if item in (int, float) else 'a,b'}; got {text!r}") from None


def flag_name(field: dataclasses.Field[Any]) -> str:
    """The command-line flag of a config field: `--batch-sizes` for `batch_sizes`."""
    return "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))


# ---------------------------------------------------------------- --import: the user's own code

IMPORT_HELP = ("modules to import first, comma-separated: a dotted name (on the Python path or "
               "in the working folder) or a .py file, e.g. the module that registers your own "
               "model with @MODELS.register (docs/python-api.md)")


def import_modules(specs: Sequence[str]) -> None:
    """Import the user's modules named by `--import`, so that the models (or methods, targets)
    they register are known before a checkpoint or config names them. A spec ending in `.py` or
    holding a path separator is a file, imported under its stem; anything else is a module name,
    looked up on `sys.path` and in the working folder (`kdpipe` is a console script: unlike
    `python -m`, it does not put the working folder on the path)."""
    for spec in specs:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            _import_file(Path(spec).expanduser().resolve(), spec)
            continue
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            if e.name is None or not (spec == e.name or spec.startswith(e.name + ".")):
                raise  # the module was found; something it imports is missing
            raise KdpipeError(f"--import {spec}: no module named {e.name!r} on the Python path "
                              f"or in {os.getcwd()}; give its .py file instead") from None


def _import_file(path: Path, spec: str) -> None:
    if not path.is_file():
        raise KdpipeError(f"--import {spec}: no such file {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return  # imported already: its registrations are in place
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise KdpipeError(f"--import {spec}: {path} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, as `import` does (dataclasses need it)
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def import_specs_for_child(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the specs, files made absolute; the folders a child process must add to its Python path
    to import the named modules the way this process did) for a subprocess that must know the
    same models: call after `import_modules(specs)`."""
    resolved, roots = [], []
    for spec in specs:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            resolved.append(str(Path(spec).expanduser().resolve()))
            continue
        resolved.append(spec)
        module = sys.modules.get(spec)
        file = getattr(module, "__file__", None)
        if file:
            path = Path(file).resolve()
            depth = spec.count(".") + (path.name == "__init__.py")
            roots.append(str(path.parents[depth]))
    return resolved, list(dict.fromkeys(roots))
