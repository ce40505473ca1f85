"""`kdpipe list`: what this installation offers, from the registries themselves.

Models, distillation methods, training devices (and whether they compute bf16 natively), export
targets (with their quantizations and whether their optional package is installed) and runtimes
(with whether they can run here, and why not).
Each section is plain records, so the CLI prints tables and a script can read the same data.
A room that is not installed or importable shows as an empty section with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]


def models() -> list[Record]:
    """Registered models with their parameter counts (built on the spot: milliseconds each)."""
    from kdpipe.models import available, count_params, create

    return [{"name": name, "params": f"{count_params(create(name)) / 1e6:.2f}M"}
            for name in available()]


def methods() -> list[Record]:
    from kdpipe.train.methods import METHODS

    return [{"name": name, "about": _first_line(METHODS.get(name).build.__doc__),
             "needs_teacher": METHODS.get(name).needs_teacher} for name in METHODS.names()]


def targets() -> list[Record]:
    """Export targets: `--quantize` values they support, and whether their package is installed."""
    from kdpipe.export import TARGETS

    records = []
    for name in TARGETS.names():
        target = TARGETS.get(name)
        ok, reason = target.available()
        records.append({"name": name, "file": target.suffix,
                        "quantize": [f"{q} ({how})" for q, how in target.quantizations.items()],
                        "available": ok, "reason": reason})
    return records


def runtimes() -> list[Record]:
    from kdpipe.runtime import RUNTIMES, runtime

    records = []
    for name in RUNTIMES.names():
        rt = runtime(name)
        ok, reason = rt.available()
        records.append({"name": name, "available": ok, "version": rt.version(),
                        "formats": list(rt.formats), "over_ssh": rt.remote_backend is not None,
                        "reason": reason})
    return records


def training_devices() -> list[Record]:
    """Where `kdpipe train` / `distill` can run here, and in which precision by default."""
    import torch

    from kdpipe.train.precision import native_bf16

    devices = [torch.device("cpu")]
    devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [{"name": str(d), "bf16": native_bf16(d),
             "default precision": "bf16 autocast" if native_bf16(d) else "fp32"}
            for d in devices]


SECTIONS: dict[str, Callable[[], list[Record]]] = {
    "models": models, "methods": methods, "training devices": training_devices,
    "export targets": targets, "runtimes": runtimes,
}


# Short headers for yes/no columns leave the width to the reasons.
HEADERS = {"available": "here", "over_ssh": "ssh", "needs_teacher": "teacher"}


def catalog() -> dict[str, list[Record] | str]:
    """Each section's records, or a string saying why that section could not be read."""
    out: dict[str, list[Record] | str] = {}
    for title, read in SECTIONS.items():
        try:
            out[title] = read()
        except ImportError as e:  # a room being built, or an optional dependency missing
            out[title] = f"not available: {e}"
    return out


def print_catalog(console: Any) -> None:
    """Print the catalog as rich tables on `console`."""
    from rich.table import Table

    for title, records in catalog().items():
        if isinstance(records, str):
            console.print(f"[bold]{title}[/]: {records}")
            continue
        table = Table(title=title, title_justify="left", title_style="bold")
        columns = list(records[0]) if records else ["name"]
        for column in columns:
            # names stay whole; long reasons wrap rather than end in an ellipsis
            table.add_column(HEADERS.get(column, column), no_wrap=column == "name",
                             overflow="fold")
        for record in records:
            table.add_row(*(_cell(record[c]) for c in columns))
        console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "[green]yes[/]" if value else "[red]no[/]"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    from rich.markup import escape

    return "" if value is None else escape(str(value))  # reasons hold "kdpipe[tensorrt]"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""

