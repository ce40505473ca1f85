"""Plain records of the train side, beside the bench's `BenchRow` (`kdpipe.report.schema`).

Field names are shared across stages (`top1`, `params`, `macs`, `wall_time_s`, ...), so one
table writer serves runs, sweeps and the pipeline. Each record reads and writes plain JSON; a key
it does not know is kept in `extra` and written back, so older and newer files both load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError


def _split(cls: type, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`values` as (known fields of `cls`, the rest)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return ({k: v for k, v in values.items() if k in names},
            {k: v for k, v in values.items() if k not in names})


@dataclass
class TrainSummary:
    """A training run's `summary.json`, written by the `Trainer` at the end of `fit()`.

    - `model`: the trained model's registry name; `method`: `scratch`, `kd`, ... (the run's
      method; `stage` names a method's prior stage, e.g. FitNets' `stage1`).
    - `top1`, `test_loss`, `test_images`: the final test evaluation (top-1 in percent);
      `val_top1` when a validation split was held out.
    - `train_images`, `epochs`; `params`, `macs` (per image, batch 1) of the student.
    - `wall_time_s`: this run's main phase; `stages`: the prior stages, name -> `epochs`,
      `wall_time_s` (`total_wall_time_s` adds them).
    - `images_per_s`: training throughput over all processes; `world_size`, `precision`
      (`bf16`/`fp32`), `environment` (machine, versions, git commit).
    - `teacher`, `teacher_checkpoint`, `teacher_sha256`, `teacher_top1`, `teacher_params`,
      `teacher_macs`: the teacher of a distill run (None for a baseline).
    - `warnings`: signs of divergence seen while training, each with the likely fix (left out
      when there were none).
    """

    top1: float
    model: str | None = None
    params: int | None = None
    macs: int | None = None
    epochs: int | None = None
    wall_time_s: float = 0.0
    test_loss: float | None = None
    test_images: int | None = None
    train_images: int | None = None
    images_per_s: float | None = None
    world_size: int = 1
    precision: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    val_top1: float | None = None
    method: str | None = None
    stage: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    teacher_top1: float | None = None
    teacher_params: int | None = None
    teacher_macs: int | None = None
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_wall_time_s(self) -> float:
        """Training time of the run, its prior stages included."""
        return self.wall_time_s + sum(s["wall_time_s"] for s in self.stages.values())

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainSummary:
        known, extra = _split(cls, values)
        return cls(**known, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The summary.json mapping; optional facts a run does not have are left out."""
        optional = ("val_top1", "method", "stage", "stages", "teacher", "teacher_checkpoint",
                    "teacher_sha256", "teacher_top1", "teacher_params", "teacher_macs",
                    "warnings")
        body = {k: v for k, v in dataclasses.asdict(self).items()
                if k != "extra" and not (k in optional and v in (None, {}, []))}
        return {**body, **self.extra}


def load_train_summary(path: str | Path) -> TrainSummary:
    """Read a run's `summary.json` (the file, or the run folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return TrainSummary.from_json(values)
    except (OSError, ValueError, TypeError) as e:
        raise KdpipeError(f"cannot read the training summary {path}: {e}") from None


@dataclass
class SweepRow:
    """One finished sweep cell: its settings and the run's results.

    - `cell`: the folder name (`kd-T4-a0.9-s0`); `group`: the name without the seed, what seeds
      are averaged over; `method`, `label` (the table's row name), `student`, `seed`.
    - `options`: the options the method reads (temperature, alpha, ...), flattened into the
      JSON row as before.
    - `top1`, `params`, `macs`, `epochs`, `wall_time_s` (stages included), `teacher`,
      `teacher_top1`: from the cell's `TrainSummary`.
    """

    cell: str
    group: str
    method: str
    label: str
    student: str | None
    seed: int
    top1: float
    options: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    teacher_top1: float | None = None
    params: int | None = None
    macs: int | None = None
    epochs: int | None = None
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        head = {k: body.pop(k) for k in ("cell", "group", "method", "label", "student", "seed")}
        return {**head, **body.pop("options"), **body}


def run_line(name: str, summary: dict[str, Any]) -> str:
    """One console line per finished run: `kd: top-1 70.65% (resnet20, kd, 8 epochs, 312 s)`."""
    facts = [summary.get("model"), summary.get("method") or "scratch",
             f"{summary.get('epochs')} epoch{'' if summary.get('epochs') == 1 else 's'}",
             f"{summary.get('wall_time_s', 0):.0f} s"]
    return f"{name}: top-1 {summary['top1']:.2f}% ({', '.join(str(f) for f in facts if f)})"
