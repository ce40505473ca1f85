"""`kdpipe sweep CONFIG`: a grid of distillation runs, resumable cell by cell, and its tables.

The file (TOML or YAML) holds a base `DistillConfig` and a grid over it:

    out = "runs/sweep-resnet"          # the sweep folder [default: runs/sweep-<file name>]
    seeds = [0]                        # every cell runs once per seed
    title = "ResNet110 -> ResNet20"

    [base]                             # DistillConfig options shared by every cell
    teacher_checkpoint = "../shared/weights/resnet110-cifar10jpeg.th"
    student = "resnet20"
    epochs = 15

    [[grid]]                           # each grid table is the product of its lists
    method = ["scratch", "rkd"]

    [[grid]]                           # `points`: options that vary together
    method = ["kd"]
    points = [{temperature = 10, alpha = 0.2}, {temperature = 4, alpha = 0.9}]

    [[grid]]                           # `seeds` in a grid table: its cells run under these
    method = ["scratch"]               # seeds instead (an extra seed where a margin is thin)
    seeds = [1]

A cell is one `distill` run in `out/<cell name>/`; its name holds the method, the options that
method reads (`kdpipe.train.methods.Method.reads`), any other option the grid varies, and the seed:
`kd-T10-a0.2-s0`, `fitnets-middle-h5-T4-a0.9-s0`, `scratch-s0`. Options a method does not read are
reset to the base value, so `scratch` crossed with four temperatures is still one cell. Cells run
seed by seed (top-level seeds first), in grid order within a seed. A cell whose `summary.json`
exists, and whose `cell.json` holds the same settings hash, is never rerun; an interrupted cell
resumes from its `last.pt`; a failed cell is reported (`error.txt`) and the others go on. After
every cell the report is rewritten:

    results.md    the KD grid ("Temperature | Alpha | Score"), the other methods and the scratch
                  baseline ("Task | Score", e.g. "Mimicking middle layer | 85.10%") and all cells,
                  each with its margin over the scratch baseline ("vs scratch") when there is one
    kd.csv, tasks.csv, cells.csv, results.json, results.png (top-1 per cell, scratch as a line)
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import statistics
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdpipe import atomic
from kdpipe.config import from_dict, read_config_file, to_dict
from kdpipe.errors import KdpipeError
from kdpipe.progress import console
from kdpipe.report.table import markdown_table, write_csv
from kdpipe.train.distill import DistillConfig, distill, resolve_student
from kdpipe.train.methods import METHODS, label, reads

CELL_FILE = "cell.json"
# Options that change where or how a cell runs, not its result: left out of its settings hash.
NOT_RESULT = frozenset({"out", "progress", "threads", "device", "cache_dir", "num_workers",
                        "teacher_cache"})
# How options appear in cell names; an option not listed appears as name=value.
SHORT = {"temperature": "T", "alpha": "a", "hint_layer": "", "hint_epochs": "h",
         "rkd_distance_weight": "d", "rkd_angle_weight": "ang", "student": "",
         "at_weight": "w", "dkd_alpha": "a", "dkd_beta": "b", "dkd_warmup_epochs": "wu",
         "dist_beta": "b", "dist_gamma": "g", "lskd_weight": "w", "lskd_ce_weight": "ce"}
KD_TABLE_METHOD = "kd"  # the method whose grid fills the "Temperature | Alpha | Score" table


@dataclass
class SweepFile:
    """The sweep file's top level; unknown keys and wrong types are errors."""

    base: dict = field(default_factory=dict)
    grid: list[dict] = field(default_factory=list)
    seeds: list[int] | None = None
    out: str | None = None
    title: str = ""


@dataclass
class Cell:
    """One run of the grid: `group` is its name without the seed (what seeds are averaged over)."""

    name: str
    group: str
    config: DistillConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.out)


# --------------------------------------------------------------------------- the grid
def read_sweep(path: str | Path) -> SweepFile:
    raw = read_config_file(path)
    if isinstance(raw.get("grid"), dict):  # a single [grid] table
        raw["grid"] = [raw["grid"]]
    spec = from_dict(SweepFile, raw, where=str(path))
    for key, top_level in (("out", "out"), ("seed", "seeds")):
        if key in spec.base or any(key in g for g in spec.grid):
            raise KdpipeError(f"{path}: {key} is set per cell by the sweep; use the top-level "
                              f"`{top_level}` instead of {key} in [base] or [[grid]]")
    if "seeds" in spec.base:
        raise KdpipeError(f"{path}: seeds goes at the top level or in a [[grid]] table, "
                          "not in [base]")
    for seeds in [spec.seeds] + [g["seeds"] for g in spec.grid if "seeds" in g]:
        if seeds is not None and (not isinstance(seeds, list) or not seeds
                                  or not all(type(s) is int for s in seeds)):
            raise KdpipeError(f"{path}: seeds must be a non-empty list of integers, "
                              f"e.g. seeds = [0, 1] (got {seeds!r})")
    return spec


def grid_points(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The product of a grid table's lists; `points` is a list of option tables varied together."""
    axes = []
    for key, value in table.items():
        if key == "points":
            axes.append([dict(p) for p in value])
        else:
            axes.append([{key: v} for v in (value if isinstance(value, list) else [value])])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def method_fields() -> set[str]:
    """Options some method reads (temperature, alpha, hint_layer, ...)."""
    return {f for name in METHODS.names() for f in METHODS.get(name).reads}


def canonical(config: DistillConfig, base: DistillConfig) -> DistillConfig:
    """`config` with the options its method does not read reset to the base value."""
    unread = method_fields() - set(reads(config.method))
    return replace(config, **{f: getattr(base, f) for f in unread})


def result_settings(config: DistillConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in NOT_RESULT}


def settings_hash(config: DistillConfig) -> str:
    text = json.dumps(result_settings(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(_value, value))
    return str(value)


def _part(name: str, value: Any) -> str:
    text = f"{SHORT[name]}{_value(value)}" if name in SHORT else f"{name}={_value(value)}"
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)


def expand(spec: SweepFile, out: Path) -> list[Cell]:
    """Every cell of the sweep, seed by seed in grid order, each once."""
    base = resolve_student(from_dict(DistillConfig, spec.base, where="[base]"))
    default_seeds = spec.seeds if spec.seeds is not None else [base.seed]
    runs = []  # (seed, config) in grid order; a table's own `seeds` replace the top-level ones
    for table in spec.grid or [{}]:
        axes = {k: v for k, v in table.items() if k != "seeds"}
        for point in grid_points(axes):
            config = canonical(resolve_student(from_dict(DistillConfig, {**spec.base, **point},
                                                         where="[[grid]]")), base)
            runs += [(seed, config) for seed in table.get("seeds", default_seeds)]
    seed_order = list(dict.fromkeys(default_seeds + [seed for seed, _ in runs]))
    runs.sort(key=lambda run: seed_order.index(run[0]))  # stable: grid order within a seed
    configs = [config for _, config in runs]
    skip = method_fields() | NOT_RESULT | {"method", "model", "seed"}
    varying = [k for k in to_dict(base) if k not in skip
               and len({json.dumps(to_dict(c)[k]) for c in configs}) > 1]
    cells: dict[str, Cell] = {}
    for seed, config in runs:
        parts = [config.method] + [_part(f, getattr(config, f)) for f in reads(config.method)]
        group = "-".join(parts + [_part(f, getattr(config, f)) for f in varying])
        name = f"{group}-s{seed}"
        # Every option that changes a result and varies is in the name: equal names, equal runs.
        cells.setdefault(name, Cell(name, group, replace(config, seed=seed, out=str(out / name))))
    return list(cells.values())


# --------------------------------------------------------------------------- running
def changed_settings(now: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """The settings that differ. One missing from `before` is an option added to kdpipe after
    that cell ran: at its default it cannot have changed the result."""
    defaults = result_settings(DistillConfig())
    return sorted(k for k in set(now) | set(before)
                  if k not in now or now[k] != before.get(k, defaults.get(k)))


def is_done(cell: Cell) -> bool:
    """Finished with the same settings; a cell started with other settings is an error."""
    saved_file = cell.folder / CELL_FILE
    if not saved_file.exists():
        return False
    saved = json.loads(saved_file.read_text())
    if saved["settings_hash"] != settings_hash(cell.config):
        if not (cell.folder / "last.pt").exists() and not (cell.folder / "summary.json").exists():
            return False  # never trained: its cell.json is simply rewritten
        changed = changed_settings(result_settings(cell.config), saved["settings"])
        if not changed:
            return (cell.folder / "summary.json").exists()
        raise KdpipeError(
            f"cell {cell.name} in {cell.folder} was run with other settings (changed: "
            f"{', '.join(changed)}); delete that folder to rerun it, or sweep into another out"
        )
    return (cell.folder / "summary.json").exists()


def run_cell(cell: Cell) -> None:
    """Run (or resume) one cell; its settings are written first, so a rerun can recognise it."""
    atomic.write_json(cell.folder / CELL_FILE, {
        "name": cell.name, "settings_hash": settings_hash(cell.config),
        "settings": result_settings(cell.config)})
    distill(cell.config, resume=True)
    (cell.folder / "error.txt").unlink(missing_ok=True)


def run_sweep(path: str | Path, *, out: str | Path | None = None,
              dry_run: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of the sweep file `path`, then write the report.

    Returns `{"out", "cells", "ran", "skipped", "failed", "files"}`. Ctrl-C stops the sweep (the
    running cell keeps its `last.pt`); any other failure of a cell is recorded and the sweep goes
    on, then ends with a `KdpipeError` naming the failed cells.
    """
    spec = read_sweep(path)
    root = Path(out or spec.out or f"runs/sweep-{Path(path).stem}")
    cells = expand(spec, root)
    result: dict[str, Any] = {"out": str(root), "cells": [c.name for c in cells], "ran": [],
                              "skipped": [], "failed": {}, "files": {}}
    done = {cell.name: is_done(cell) for cell in cells}  # stale cells fail before any training
    if dry_run:
        for cell in cells:
            console.print(f"{cell.name}: {'done' if done[cell.name] else 'to run'}")
        return result
    for i, cell in enumerate(cells, 1):
        if done[cell.name]:
            result["skipped"].append(cell.name)
            continue
        console.print(f"[bold]cell {i}/{len(cells)}: {cell.name}[/]")
        try:
            run_cell(cell)
            result["ran"].append(cell.name)
        except Exception as e:  # one broken cell must not cost the night's other cells
            result["failed"][cell.name] = f"{type(e).__name__}: {e}"
            atomic.write_text(cell.folder / "error.txt", traceback.format_exc())
            console.print(f"[red]cell {cell.name} failed:[/] {e}")
        result["files"] = write_report(root, collect(cells), spec.title)
    result["files"] = write_report(root, collect(cells), spec.title)
    if result["failed"]:
        listed = "; ".join(f"{k}: {v}" for k, v in result["failed"].items())
        raise KdpipeError(f"{len(result['failed'])} of {len(cells)} cells failed ({listed}); "
                          f"see error.txt in their folders under {root}, then run the sweep again")
    return result


# --------------------------------------------------------------------------- results
def collect(cells: list[Cell]) -> list[dict[str, Any]]:
    """A plain record per finished cell: its settings, top-1 and costs."""
    records = []
    for cell in cells:
        summary_file = cell.folder / "summary.json"
        if not summary_file.exists():
            continue
        s = json.loads(summary_file.read_text())
        c = cell.config
        stages = sum(v["wall_time_s"] for v in s.get("stages", {}).values())
        records.append({
            "cell": cell.name, "group": cell.group, "method": c.method,
            "label": label(c.method, c), "student": c.student, "seed": c.seed,
            **{f: getattr(c, f) for f in reads(c.method)},
            "top1": s["top1"], "teacher": s.get("teacher"), "teacher_top1": s.get("teacher_top1"),
            "params": s.get("params"), "macs": s.get("macs"), "epochs": s.get("epochs"),
            "wall_time_s": s.get("wall_time_s", 0.0) + stages,
        })
    return records


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
    kd = [{**r, "temperature": _value(r["temperature"]), "alpha": _value(r["alpha"])}
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
                  f"{first['epochs']} epochs; seeds {seeds}; test top-1 at the last epoch"
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


def write_report(out: Path, records: list[dict[str, Any]], title: str) -> dict[str, str]:
    """Write the tables, the plot and the records; returns the files by kind ({} if none ran)."""
    if not records:
        return {}
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
