"""Write a `BenchReport` as `bench.md` (a table for people, ending with what to ship),
`bench.json` (schema v2, for programs), `bench.csv` (the rows' raw fields, for spreadsheets)
and `bench.png` (accuracy vs batch-1 latency with the Pareto front).

All are rendered in memory first and then each written atomically, so a failure while
rendering leaves no partial report, and a reader never sees a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdpipe import atomic
from kdpipe.progress import plural
from kdpipe.report import recommend
from kdpipe.report.plot import accuracy_latency_png
from kdpipe.report.recommend import Constraints
from kdpipe.report.schema import NOISY_SPREAD, BenchReport, BenchRow
from kdpipe.report.table import csv_text, markdown_table

NOISY_NOTE = "noisy: the machine was busy; rerun"

# The reason every row measured on an emulated device carries (set by the ssh device).
EMULATED_NOTE = "emulated (qemu): latency not representative"

REPORT_FILES = {"markdown": "bench.md", "json": "bench.json", "csv": "bench.csv",
                "plot": "bench.png"}

# (row field, header, row -> cell text) of the Markdown table, in column order.
COLUMNS: list[tuple[str, str, Callable[[BenchRow], str]]] = [
    ("name", "artifact", lambda r: r.name),
    ("runtime", "runtime", lambda r: r.runtime),
    ("format", "format", lambda r: r.format),
    ("quantization", "quant", lambda r: r.quantization),
    ("top1", "top-1 %", lambda r: _num(r.top1, "{:.2f}")),
    ("params", "params", lambda r: _count(r.params)),
    ("macs", "MACs", lambda r: _count(r.macs)),
    ("size_bytes", "size", lambda r: _bytes(r.size_bytes)),
    ("batch_size", "batch", lambda r: str(r.batch_size)),
    ("p50_ms", "p50 ms", lambda r: _num(r.p50_ms, "{:.3f}") + _emulated(r)),
    ("p90_ms", "p90 ms", lambda r: _num(r.p90_ms, "{:.3f}")),
    ("p99_ms", "p99 ms", lambda r: _num(r.p99_ms, "{:.3f}")),
    ("spread", "p90/p50", lambda r: _num(r.spread, "{:.2f}") + (f" ({NOISY_NOTE})"
                                                                if r.noisy else "")),
    ("throughput_ips", "img/s", lambda r: _num(r.throughput_ips, "{:,.0f}")),
    ("peak_rss_mb", "peak RSS MiB", lambda r: _num(r.peak_rss_mb, "{:.0f}")),
    ("status", "status", lambda r: r.status if not r.reason else f"{r.status}: {r.reason}"),
]


def write_bench_report(report: BenchReport, out_dir: str | Path,
                       constraints: Constraints | None = None) -> dict[str, Path]:
    """Write the report files into `out_dir`; returns their paths by kind. `constraints` (the
    user's --min-top1 / --max-latency-ms / --max-size-mb) choose the recommended row."""
    out = Path(out_dir)
    records = [dataclasses.asdict(row) for row in report.rows]
    fields = [(f.name, f.name) for f in dataclasses.fields(BenchRow)]
    rendered = {
        "markdown": markdown(report, constraints).encode("utf-8"),
        "json": (json.dumps(report.to_json(), indent=2) + "\n").encode("utf-8"),
        "csv": csv_text(records, fields).encode("utf-8"),
        "plot": accuracy_latency_png(report.rows, title=plot_title(report)),
    }
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    for kind, data in rendered.items():
        atomic.write_bytes(paths[kind], data)
    return paths


def plot_title(report: BenchReport) -> str:
    machine = report.machine
    return (f"{machine.get('cpu', '?')}, {plural(machine.get('threads', '?'), 'thread')} "
            f"({report.device})")


def markdown(report: BenchReport, constraints: Constraints | None = None) -> str:
    """The report as Markdown: where and how it was measured, the table, the notes, then what to
    ship (`recommend`)."""
    lines = ["# kdpipe bench", "", *_header(report), "", bench_table(report.rows)]
    notes = [*report.notes, *timing_notes(report.rows)]
    if notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    lines += ["", *recommend.markdown(recommend.recommend(report.rows, constraints))]
    return "\n".join(lines) + "\n"


def timing_notes(rows: list[BenchRow]) -> list[str]:
    """Warnings a reader needs before trusting the latency columns."""
    noisy = sorted({f"{r.name} ({r.runtime})" for r in rows if r.noisy})
    notes = recommend.latency_disagreements(rows)
    if noisy:
        notes.insert(0, f"noisy timing (p90/p50 > {NOISY_SPREAD}) for {', '.join(noisy)}: the "
                        "machine was busy while timing; rerun on a quiet machine before comparing "
                        "latencies")
    return notes


def bench_table(rows: list[BenchRow]) -> str:
    """The rows as a Markdown table, numbers formatted for people (the JSON keeps them raw).

    A runtime skipped for a whole file (not installed, no GPU, not macOS) would repeat the same
    reason on every batch size: such rows fold into one row with the batch sizes listed.
    """
    shown: list[dict[str, str]] = []
    folded: dict[tuple[str, str, str, str], dict[str, str]] = {}
    for row in rows:
        cells = {key: fmt(row) for key, _, fmt in COLUMNS}
        if row.status == "ok" or not row.reason:
            shown.append(cells)
            continue
        key = (row.name, row.runtime, row.status, row.reason)
        if key in folded:
            folded[key]["batch_size"] += f",{row.batch_size}"
        else:
            folded[key] = cells
            shown.append(cells)
    return markdown_table(shown, [(key, header) for key, header, _ in COLUMNS]).rstrip("\n")


def _header(report: BenchReport) -> list[str]:
    m, p = report.machine, report.protocol
    versions = ", ".join(f"{name} {version or 'not installed'}"
                         for name, version in report.runtimes.items())
    lines = [
        f"- **device**: {report.device}: {m.get('cpu', '?')}, "
        f"{plural(m.get('cpu_count', '?'), 'logical core')}, "
        f"{plural(m.get('threads', '?'), 'thread')} per runtime; {m.get('platform', '')}, "
        f"Python {m.get('python', '?')}",
        f"- **runtimes**: {versions}",
        f"- **protocol**: {p.get('warmup')} warm-up + {p.get('iters')} timed calls per batch size"
        + (f" (or {p['time_budget_s']} s)" if p.get("time_budget_s") else "")
        + f", {p.get('input')}; {p.get('timer')}; {p.get('percentiles')} "
        "(docs/latency-protocol.md)",
        f"- **top-1**: {_data(report.data)}",
        f"- **written**: {report.created_utc}, schema_version {report.schema_version}",
    ]
    if report.host:
        lines.insert(1, f"- **driven from**: {report.host.get('cpu', '?')}, "
                        f"{report.host.get('platform', '')}")
    return lines


def _data(data: dict[str, Any] | None) -> str:
    if not data:
        return "not measured"
    return f"{data.get('n_test')} test images of {data.get('source')}"


def _emulated(row: BenchRow) -> str:
    """Beside an emulated device's latency: the number proves the file runs, nothing more."""
    return f" ({EMULATED_NOTE})" if row.p50_ms is not None and row.reason == EMULATED_NOTE else ""


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _count(value: int | None) -> str:
    """Parameters and MACs in the units papers use: 0.27M, 40.8M."""
    if value is None:
        return ""
    if value >= 1e9:
        return f"{value / 1e9:.2f}G"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}K" if value >= 1e3 else str(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return ""
    if value >= 1 << 20:
        return f"{value / (1 << 20):.2f} MiB"
    return f"{value / 1024:.1f} KiB"


def console_table(rows: list[BenchRow]) -> str:
    """A compact plain-text table for the console (name, runtime, batch, top-1, p50, img/s); the
    full one is bench.md's. Skipped and failed runs show their status in place of numbers."""
    header = ("artifact", "runtime", "batch", "top-1 %", "p50 ms", "img/s")
    lines = [header]
    for r in rows:
        if r.status == "ok":
            p50 = _num(r.p50_ms, "{:.3f}") + (" (noisy)" if r.noisy else "")
            lines.append((r.name, r.runtime, str(r.batch_size), _num(r.top1, "{:.2f}"), p50,
                          _num(r.throughput_ips, "{:,.0f}")))
        else:
            lines.append((r.name, r.runtime, str(r.batch_size), r.status, "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4, 5}  # numbers align right
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True))
                               ).rstrip() for line in lines)
