"""The sweep's report: `results.md` (the survey's table shapes), CSV tables, `results.json` and
`results.png`, from the `SweepRow` of every finished cell (`kdpipe.sweep.collect`).

    results.md    the KD grid ("Temperature | Alpha | Score"), the other methods and the scratch
                  baseline ("Task | Score", e.g. "Mimicking middle layer | 85.10%") and all cells,
                  each with its margin over the scratch baseline ("vs scratch") when there is one
    kd.csv, tasks.csv, cells.csv, results.json, results.png (top-1 per cell, scratch as a line)
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

from kdpipe import atomic
from kdpipe.progress import plural
from kdpipe.report.records import SweepRow
from kdpipe.report.table import markdown_table, write_csv

KD_TABLE_METHOD = "kd"  # the method whose grid fills the "Temperature | Alpha | Score" table


def format_value(value: Any) -> str:
    """An option value as cell names and tables show it: `4`, `0.9`, `a,b`."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(format_value, value))
    return str(value)


def score(mean: float, std: float | None) -> str:
    """`85.12%`, or `85.12 ± 0.31%` over several seeds."""
    return f"{mean:.2f}%" if std is None else f"{mean:.2f} ± {std:.2f}%"


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group: mean and sample standard deviation of top-1 over its seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    rows = []
    for members in groups.values():
        top1 = [m["top1"] for m in members]
        std = statistics.stdev(top1) if len(top1) > 1 else None
        rows.append({**{k: v for k, v in members[0].items() if k not in ("cell", "seed")},
                     "seeds": len(top1), "top1": statistics.fmean(top1), "top1_std": std,
                     "top1_by_seed": {m["seed"]: m["top1"] for m in members},
                     "score": score(statistics.fmean(top1), std),
                     "wall_time_s": round(statistics.fmean(m["wall_time_s"] for m in members))})
    return rows


Table = tuple[list[dict[str, Any]], list[tuple[str, str]], list[tuple[str, str]]]


def report_tables(rows: list[dict[str, Any]]) -> dict[str, Table]:
    """The KD grid, the tasks and all cells, each as (rows, Markdown columns, CSV columns):
    Markdown shows the formatted score, CSV the raw mean and std."""
    rows = with_margin_over_scratch(rows)
    kd = [{**r, "temperature": format_value(r["temperature"]), "alpha": format_value(r["alpha"])}
          for r in rows if r["method"] == KD_TABLE_METHOD]
    several_students = len({r["student"] for r in rows}) > 1
    teacher = next((r for r in rows if r.get("teacher_top1") is not None), None)
    tasks = [{"task": f"Teacher ({teacher['teacher']})", "score": score(teacher["teacher_top1"],
                                                                        None),
              "top1": teacher["teacher_top1"]}] if teacher else []
    tasks += [{"task": r["label"] + (f" ({r['student']})" if several_students else ""),
               **{k: r[k] for k in ("score", "top1", "top1_std", "vs_scratch", "margin")}}
              for r in rows if r["method"] != KD_TABLE_METHOD]
    raw = [("top1", "top1"), ("top1_std", "top1_std"), ("vs_scratch", "vs_scratch")]
    margin_column = [("margin", "vs scratch")] if any(r["margin"] for r in rows) else []
    cell_columns = [("group", "Cell"), ("method", "Method"), ("student", "Student"),
                    ("seeds", "Seeds"), ("score", "Top-1"), *margin_column,
                    ("params", "Params"),
                    ("epochs", "Epochs"), ("wall_time_s", "Wall time (s)")]
    kd_columns = [("temperature", "Temperature"), ("alpha", "Alpha"), ("score", "Score")]
    task_columns = [("task", "Task"), ("score", "Score")]
    return {
        "kd": (kd, kd_columns + margin_column, kd_columns[:2] + raw),
        "tasks": (tasks, task_columns + margin_column, task_columns[:1] + raw),
        "cells": (rows, cell_columns, [c for c in cell_columns if c[0] not in ("score", "margin")]
                  + raw),
    }


def paired_gain(row: dict[str, Any], scratch: dict[str, Any]) -> float:
    """Mean top-1 gain over scratch, paired by seed where both ran it (a seed fixes the initial
    student and the batch order, so pairing removes that noise); else the difference of means."""
    mine, theirs = row["top1_by_seed"], scratch["top1_by_seed"]
    common = [seed for seed in mine if seed in theirs]
    if not common:
        return row["top1"] - scratch["top1"]
    return statistics.fmean(mine[seed] - theirs[seed] for seed in common)


def with_margin_over_scratch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row plus `vs_scratch`, its `margin` over the scratch row of its student (the bar
    every method has to clear); None where there is no such row or the row is scratch."""
    scratch = {r["student"]: r for r in rows if r["method"] == "scratch"}
    out = []
    for r in rows:
        base = scratch.get(r["student"]) if r["method"] != "scratch" else None
        delta = None if base is None else round(paired_gain(r, base), 4)
        out.append({**r, "vs_scratch": delta,
                    "margin": "" if delta is None else f"{delta:+.2f}"})
    return out


def markdown_report(title: str, tables: dict[str, Table], records: list[dict[str, Any]]) -> str:
    first = records[0] if records else {}
    seeds = sorted({r["seed"] for r in records})
    counts = {row["seeds"] for row in tables["cells"][0]}
    over = " (mean ± std over seeds)" if counts == {len(seeds)} else \
        " (mean ± std where a row has several seeds: see the Seeds column)"
    lines = [f"# {title or 'kdpipe sweep'}", ""]
    if first:
        lines += [f"Student {first['student']}, teacher {first['teacher'] or '-'}; "
                  f"{plural(first['epochs'], 'epoch')}; seeds {seeds}; test top-1 at the last epoch"
                  + (over if len(seeds) > 1 else "") + ".", ""]
    if any(r.get("margin") for r in tables["cells"][0]):
        lines += ["\"vs scratch\": top-1 points gained over the student trained from scratch, "
                  "seed against the same seed (same initial weights and batch order).", ""]
    sections = (("kd", "Response based (Hinton et al. 2015)"), ("tasks", "Tasks"),
                ("cells", "All cells"))
    for key, heading in sections:
        rows, columns, _ = tables[key]
        if rows:
            lines += [f"## {heading}", "", markdown_table(rows, columns)]
    lines += ["![top-1 per cell](results.png)", ""]
    return "\n".join(lines)


def plot_png(rows: list[dict[str, Any]], title: str) -> bytes:
    """Top-1 per cell (error bars: std over seeds), scratch baseline and teacher as lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar(range(len(rows)), [r["top1"] for r in rows],
                  yerr=[r["top1_std"] or 0.0 for r in rows], color="tab:blue", capsize=3)
    ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", color="white")
    ax.set_xticks(range(len(rows)), [r["group"] for r in rows], rotation=45, ha="right",
                  fontsize=8)
    for r in rows:
        if r["method"] == "scratch":
            ax.axhline(r["top1"], color="tab:red", label=f"scratch {r['student']}")
    teacher = next((r for r in rows if r.get("teacher_top1") is not None), None)
    if teacher:
        ax.axhline(teacher["teacher_top1"], color="black", linestyle="--",
                   label=f"teacher {teacher['teacher']}")
    values = [r["top1"] for r in rows] + ([teacher["teacher_top1"]] if teacher else [])
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 3))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title or "kdpipe sweep")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(out: Path, cells: list[SweepRow], title: str) -> dict[str, str]:
    """Write the tables, the plot and the records; returns the files by kind ({} if none ran)."""
    if not cells:
        return {}
    records = [cell.to_json() for cell in cells]
    rows = aggregate(records)
    tables = report_tables(rows)
    files = {"markdown": out / "results.md", "json": out / "results.json",
             "plot": out / "results.png"}
    atomic.write_text(files["markdown"], markdown_report(title, tables, records))
    atomic.write_json(files["json"], {"title": title, "cells": records, "groups": rows})
    atomic.write_bytes(files["plot"], plot_png(rows, title))
    for key, (table_rows, _, csv_columns) in tables.items():
        files[f"{key}_csv"] = out / f"{key}.csv"
        write_csv(files[f"{key}_csv"], table_rows, csv_columns)
    return {k: str(v) for k, v in files.items()}
