"""Glue between typer and kdpipe: dataclass configs as flags, errors as one-line messages, help
that reads as prose.

`config_command(app, TrainConfig)` turns every field of a config dataclass into a `--flag` (help
text from the field's metadata) plus `--config FILE`; the decorated function receives the merged,
type-checked dataclass. A flag the user did not type is `None` and leaves the file's value alone.
Every command runs inside `kdpipe.quiet.captured()` (third-party output held back) and
`friendly_errors`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import io
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Optional

import typer
import typer.core
from rich.markup import escape

from kdpipe import quiet
from kdpipe.config import (
    IMPORT_HELP,
    comma_list,
    flag_name,
    import_modules,
    merge,
    read_config_file,
)
from kdpipe.errors import KdpipeError
from kdpipe.progress import console


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` and return the Exit to raise (no traceback ever reaches the user)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `KdpipeError` into a message and exit 2, a file system error (full disk, read-only
    or missing folder, no permission) into one line naming the path and exit 1, Ctrl-C into
    exit 130, in any command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            # Library output is held back (and replayed before the error line on a failure).
            with quiet.captured():
                return fn(*args, **kwargs)
        except KdpipeError as e:
            raise fail(str(e)) from None
        except OSError as e:
            raise fail(os_error_message(e), code=1) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


# Errors that only a write (or creating a folder) gives: the message says "cannot write".
_EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)  # disk quota exceeded; not on every OS
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, _EDQUOT, errno.EFBIG, errno.ENOTDIR,
                 errno.EEXIST, errno.EACCES, errno.EPERM, errno.EISDIR}


def os_error_message(e: OSError) -> str:
    """`cannot write PATH: No space left on device` and the like: the path and the cause."""
    cause = e.strerror or str(e)
    if e.filename is None:
        return f"file system error: {cause}"
    path = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    verb = "cannot write" if e.errno in _WRITE_ERRNOS else "cannot use"
    hint = {errno.ENOSPC: "; free some space and run the same command again (the last good "
                          "files were kept)",
            _EDQUOT: "; free some space and run the same command again",
            errno.EROFS: "; choose a writable folder",
            errno.ENOTDIR: "; a part of that path is a file, not a folder",
            errno.EEXIST: "; it is a file where a folder is needed"}.get(e.errno, "")
    return f"{verb} {path}: {cause}{hint}"


def _list_item(tp: Any) -> type | None:
    """`int` for `list[int]` (optional or not), None for a field that is not a plain list."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _list_item(inner[0]) if len(inner) == 1 else None
    if origin in (list, tuple) and args and args[0] in (int, float, str):
        return args[0]
    return None


def _cli_type(tp: Any) -> Any | None:
    """The type typer should parse a field as (always optional), or None if config-file only.
    Lists are one comma-separated flag (`--batch-sizes 1,32`), parsed by `comma_list`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _list_item(tp) is not None:
        return Optional[str]  # noqa: UP045 - typer needs typing.Optional
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _cli_type(inner[0]) if len(inner) == 1 else None
    if origin is typing.Literal:
        return Optional[str]  # noqa: UP045 - typer needs typing.Optional
    if tp in (int, float, str, bool, Path):
        return Optional[tp]  # noqa: UP045
    return None


def parse_flags(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Flag values as the config's types: comma-separated lists become lists."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(values)
    for name, value in values.items():
        item = _list_item(hints[name])
        if item is not None and isinstance(value, str):
            out[name] = comma_list(value, item, flag_name(fields[name]))
    return out


def _flag_names(field: dataclasses.Field[Any], tp: Any) -> list[str]:
    flag = flag_name(field)
    if tp is bool:
        return [f"{flag}/--no-{flag[2:]}"]
    return [flag]


def _own_fields_first(cls: type) -> list[dataclasses.Field[Any]]:
    """`cls`'s fields, those it declares before those it inherits: the options shared through a
    base class (`ShipLimits`) close `--help` instead of opening it."""
    own = vars(cls).get("__annotations__", {})
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword-only `typer.Option(None)` parameter per CLI-able field of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in _own_fields_first(cls):
        cli_tp = _cli_type(hints[f.name])
        if cli_tp is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        extra = f" [default: {default}]" if default not in (None, "") else ""
        option = typer.Option(
            None,
            *_flag_names(f, hints[f.name]),
            # Help is rich markup: escaped, so `[default: ...]` and `kdpipe[ray]` print as written.
            help=escape(f.metadata.get("help", "") + extra),
            show_default=False,
        )
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_tp
            )
        )
    return params


def import_option() -> Any:
    """`--import MODULE[,MODULE]` of a command whose config has no `imports` field."""
    return typer.Option(None, "--import", help=escape(IMPORT_HELP))


def config_command(
    app: typer.Typer, cls: type, name: str | None = None, *,
    file_argument: str | None = None,
    load: Callable[[str | None, dict[str, Any]], Any] | None = None,
    user_modules: bool = False,
    appendix: Callable[[], Any] | None = None,
    **command_kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(config: cls, **own_params)` as a command whose flags are `cls`'s fields.

    The config file is `--config FILE`, or with `file_argument` (its help text) an optional
    positional argument instead, as in `kdpipe pipeline full`. `load(file, flags)` builds the
    config where the file needs more than `merge` (a shipped name, say). `user_modules` adds
    `--import MODULE`, imported before the config is built. `appendix()` returns a rich
    renderable printed at the end of the command's help, built only when help is asked for.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Resolve string annotations (`from __future__ import annotations`): typer needs types.
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != "config"
        ]
        field_params = config_parameters(cls)
        field_names = {p.name for p in field_params}
        if file_argument is None:
            file_default = typer.Option(
                None, "--config",
                help="TOML or YAML file with any of these options (flags override it)")
        else:
            file_default = typer.Argument(None, metavar="CONFIG", help=file_argument,
                                          show_default=False)
        config_param = inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[str],  # noqa: UP045
            default=file_default,
        )
        extra = [inspect.Parameter("user_modules", inspect.Parameter.KEYWORD_ONLY,
                                   annotation=Optional[str],  # noqa: UP045
                                   default=import_option())] if user_modules else []

        @friendly_errors
        def command(**kwargs: Any) -> Any:
            modules = kwargs.pop("user_modules", None)
            if modules:
                import_modules(comma_list(modules, str, "--import"))
            config_file = kwargs.pop("config_file")
            overrides = parse_flags(cls, {k: kwargs.pop(k) for k in list(kwargs)
                                          if k in field_names})
            if load is not None:
                config = load(config_file, overrides)
            else:
                file_values = read_config_file(config_file) if config_file else {}
                config = merge(cls, file_values, overrides)
            return fn(config, **kwargs)

        positional = [p for p in own if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keyword = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in own
            if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            positional + [config_param] + extra + keyword + field_params
        )
        command.__doc__ = prose(fn.__doc__ or "")
        command.__name__ = fn.__name__
        command_class = Command if appendix is None else type(
            "AppendixCommand", (Command,), {"appendix": staticmethod(appendix)})
        app.command(name or fn.__name__.replace("_", "-"), cls=command_class,
                    **command_kwargs)(command)
        return fn

    return decorate


# ---------------------------------------------------------------- help that reads as prose
def prose(doc: str) -> str:
    """A docstring as help paragraphs: the lines of each paragraph joined, so the terminal wraps
    them once (rich keeps a docstring's own line breaks and wraps them again at 80 columns);
    indented blocks (config examples) keep their lines."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith(" ") else " ".join(p.split("\n"))
                       for p in paragraphs)




def _no_flag_metavars(command: Any, ctx: Any) -> None:
    """A flag takes no value: an empty metavar keeps typer from printing `<bool>` beside it
    (`--help` included, which typer makes itself)."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class Group(typer.core.TyperGroup):
    """The `kdpipe` group: flags without a `<bool>` metavar in its help."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _no_flag_metavars(self, ctx)
        super().format_help(ctx, formatter)


class Command(typer.core.TyperCommand):
    """A kdpipe command: usage names arguments `CHECKPOINT` (typer writes `{checkpoint}`), flags
    show no `<bool>`, and an optional `appendix` (a rich table, say) ends the help."""

    appendix: ClassVar[Callable[[], Any] | None] = None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            label = param.metavar or (param.name or "").upper()
            label += "..." if param.nargs != 1 else ""
            pieces.append(label if param.required else f"[{label}]")
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _no_flag_metavars(self, ctx)
        super().format_help(ctx, formatter)
        if self.appendix is None:
            return
        from rich.console import Console

        if getattr(self, "rich_markup_mode", None) is None:  # click's plain formatter
            buffer = io.StringIO()
            Console(file=buffer, width=formatter.width, highlight=False).print(self.appendix())
            formatter.write(buffer.getvalue())
        else:  # typer printed the help itself, on stdout
            Console(highlight=False).print(self.appendix())
