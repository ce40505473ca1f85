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

results.md (the survey's table shapes), CSV tables, results.json and results.png: see
`kdpipe.report.sweep_report`. A file may be a path or the name of one shipped in `kdpipe/configs/`
(`kdpipe sweep sweep-resnet`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdpipe import atomic, runlock
from kdpipe.config import (
    find_config_file,
    from_dict,
    not_result_fields,
    option,
    read_config_file,
    results_only,
    shipped_configs,
    to_dict,
)
from kdpipe.errors import KdpipeError
from kdpipe.executors.base import Work, ordered_by_cache, teacher_cache_key
from kdpipe.progress import console
from kdpipe.report.records import SweepRow, load_train_summary
from kdpipe.report.sweep_report import format_value, write_report
from kdpipe.train.config import DistillConfig

# kdpipe.train.distill and .methods (torch, torch._dynamo) are imported where they run, so that
# `kdpipe --help`, which imports this module for the sweep command's options, stays fast.

CELL_FILE = "cell.json"
# Options that change where or how a cell runs, not its result (`option(..., result=False)`):
# left out of its settings hash and its name.
NOT_RESULT = not_result_fields(DistillConfig)
# How options appear in cell names (`option(..., short=...)`); any other appears as name=value.
SHORT = {f.name: f.metadata["short"] for f in dataclasses.fields(DistillConfig)
         if f.metadata.get("short") is not None}


@dataclass
class SweepOptions:
    """How `kdpipe sweep FILE` runs the file's grid (the grid itself is the file's)."""

    out: str | None = option(None, "sweep folder [default: the file's out]", result=False)
    dry_run: bool = option(False, "list the cells and whether each is done; run none",
                           result=False)
    executor: str = option("local", "where cells run: local (one after another, here) or ray "
                           "(parallel Ray tasks; needs pip install 'kdpipe[ray]')", result=False)
    ray_address: str | None = option(None, "Ray cluster to join (auto, ray://host:10001) "
                                     "[default: start a local Ray instance]", result=False)
    shared_storage: bool = option(False, "confirm the sweep folder is on a filesystem every Ray "
                                  "node mounts at the same path (needed on a multi-node "
                                  "cluster)", result=False)


@dataclass
class SweepFile:
    """The sweep file's top level; unknown keys and wrong types are errors."""

    base: dict = field(default_factory=dict)
    grid: list[dict] = field(default_factory=list)
    seeds: list[int] | None = None
    out: str | None = None
    title: str = ""
    resources: dict = field(default_factory=dict)  # per cell under Ray: num_cpus, num_gpus


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
def sweep_configs() -> list[str]:
    """Names of the sweep files shipped in `kdpipe/configs/` (`kdpipe sweep NAME`)."""
    return [name for name in shipped_configs() if name.startswith("sweep-")]


def read_sweep(path: str | Path) -> SweepFile:
    """The sweep file `path` (or the name of a shipped one), checked before any cell runs."""
    path = find_config_file(path)
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
    from kdpipe.train.methods import METHODS
    return {f for name in METHODS.names() for f in METHODS.get(name).reads}


def canonical(config: DistillConfig, base: DistillConfig) -> DistillConfig:
    """`config` with the options its method does not read reset to the base value."""
    from kdpipe.train.methods import reads
    unread = method_fields() - set(reads(config.method))
    return replace(config, **{f: getattr(base, f) for f in unread})


def result_settings(config: DistillConfig) -> dict[str, Any]:
    return results_only(config)


def settings_hash(config: DistillConfig) -> str:
    text = json.dumps(result_settings(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _part(name: str, value: Any) -> str:
    text = (f"{SHORT[name]}{format_value(value)}" if name in SHORT
            else f"{name}={format_value(value)}")
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)


def expand(spec: SweepFile, out: Path) -> list[Cell]:
    """Every cell of the sweep, seed by seed in grid order, each once."""
    from kdpipe.train.distill import resolve_student
    from kdpipe.train.methods import reads
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
    that cell ran: at its default it cannot have changed the result. One in `before` that is now
    marked `result=False` was recorded by an older kdpipe and is ignored."""
    defaults = result_settings(DistillConfig())
    return sorted(k for k in (set(now) | set(before)) - NOT_RESULT
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


def distill(config: DistillConfig, resume: bool = False) -> Any:
    """`kdpipe.train.distill.distill`, imported on first use (the seam tests replace)."""
    from kdpipe.train.distill import distill as run

    return run(config, resume=resume)


def run_cell(cell: Cell) -> None:
    """Run (or resume) one cell; its settings are written first, so a rerun can recognise it."""
    atomic.write_json(cell.folder / CELL_FILE, {
        "name": cell.name, "settings_hash": settings_hash(cell.config),
        "settings": result_settings(cell.config)})
    distill(cell.config, resume=True)
    (cell.folder / "error.txt").unlink(missing_ok=True)


def run_sweep(path: str | Path, *, out: str | Path | None = None, dry_run: bool = False,
              executor: str = "local", ray_address: str | None = None,
              shared_storage: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of the sweep file `path`, then write the report.

    Returns `{"out", "cells", "ran", "skipped", "failed", "files"}`. Ctrl-C stops the sweep (the
    running cell keeps its `last.pt`); any other failure of a cell is recorded and the sweep goes
    on, then ends with a `KdpipeError` naming the failed cells. `executor` is where the cells run:
    `local` (one after another, here) or `ray` (tasks on a local Ray instance, or on the cluster
    at `ray_address`; see `kdpipe.executors.ray_executor`).
    """
    from kdpipe.executors import EXECUTORS

    runner = EXECUTORS.get(executor)(address=ray_address, shared_storage=shared_storage,
                                     **read_sweep(path).resources)
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
    # One sweep per folder for its whole run (each cell's trainer locks its own folder too).
    with runlock.hold(root, purpose="--out"):
        return _run_cells(spec, root, cells, done, result, runner)


def _run_cells(spec: SweepFile, root: Path, cells: list[Cell], done: dict[str, bool],
               result: dict[str, Any], runner: Any) -> dict[str, Any]:
    """The body of `run_sweep`, under its lock: the executor runs the unfinished cells and the
    report is rewritten after each one."""
    result["skipped"] = [c.name for c in cells if done[c.name]]
    work = plan_work([c for c in cells if not done[c.name]])

    def report(_: str) -> None:
        result["files"] = write_report(root, collect(cells), spec.title)

    outcome = runner.run(work, run_cell, on_done=report)
    result["ran"] = [name for name, error in outcome.items() if error is None]
    result["failed"] = {name: error for name, error in outcome.items() if error is not None}
    result["files"] = write_report(root, collect(cells), spec.title)
    if result["failed"]:
        listed = "; ".join(f"{k}: {v}" for k, v in result["failed"].items())
        raise KdpipeError(f"{len(result['failed'])} of {len(cells)} cells failed ({listed}); "
                          f"see error.txt in their folders under {root}, then run the sweep again")
    return result


def plan_work(cells: list[Cell]) -> list[Work]:
    """The cells as executor work, in order; a cell reading a teacher cache that an earlier cell
    of this run fills (same cache folder, same seed) waits for that cell."""
    work = [Work(name=cell.name, folder=cell.folder, cell=cell) for cell in cells]
    return ordered_by_cache(work, lambda cell: teacher_cache_key(cell.config))


# --------------------------------------------------------------------------- results
def collect(cells: list[Cell]) -> list[SweepRow]:
    """A record per finished cell: its settings, top-1 and costs."""
    from kdpipe.train.methods import label, reads
    rows = []
    for cell in cells:
        if not (cell.folder / "summary.json").exists():
            continue
        s = load_train_summary(cell.folder)
        c = cell.config
        rows.append(SweepRow(
            cell=cell.name, group=cell.group, method=c.method, label=label(c.method, c),
            student=c.student, seed=c.seed, options={f: getattr(c, f) for f in reads(c.method)},
            top1=s.top1, teacher=s.teacher, teacher_top1=s.teacher_top1, params=s.params,
            macs=s.macs, epochs=s.epochs, wall_time_s=s.total_wall_time_s,
        ))
    return rows
