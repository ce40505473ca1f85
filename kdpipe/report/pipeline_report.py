"""The pipeline's one report: `index.md` (models, artifacts, bench, plot) and `pipeline.json`.

It reads only the files the stages wrote (summary.json, artifact sidecars, bench.json), so it can be
rebuilt from a finished run folder at any time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdpipe import atomic
from kdpipe.progress import plural
from kdpipe.report import recommend
from kdpipe.report.bench_report import REPORT_FILES, bench_table, timing_notes
from kdpipe.report.recommend import Constraints
from kdpipe.report.records import TrainSummary, load_train_summary
from kdpipe.report.schema import BenchRow, load_bench_report
from kdpipe.report.table import markdown_table

SCHEMA_VERSION = 1

MODEL_COLUMNS = [("name", "Model"), ("architecture", "Architecture"), ("method", "Method"),
                 ("top1", "Top-1 %"), ("params", "Params"), ("macs", "MACs"),
                 ("epochs", "Epochs"), ("train_images", "Train images"),
                 ("wall_time_s", "Train time s")]
ARTIFACT_COLUMNS = [("file", "Artifact"), ("format", "Format"), ("quantization", "Quantization"),
                    ("size_kib", "Size KiB"), ("parity", "Parity (top-1 agree / max |dlogit|)"),
                    ("artifact_top1", "Top-1 % (parity set)")]


def model_rows(teacher: Path, students: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per model from the runs' summary.json; the teacher's row from a distill run's
    record of it (its checkpoint is loaded only for runs from before kdpipe recorded its size)."""
    rows: list[dict[str, Any]] = []
    taught: TrainSummary | None = None
    for name, checkpoint in students.items():
        summary = load_train_summary(checkpoint.parent)
        if summary.teacher_top1 is not None:
            taught = summary
        rows.append({
            "name": name, "architecture": summary.model, "method": summary.method,
            "top1": round(summary.top1, 2), "params": summary.params,
            "macs": summary.macs, "epochs": summary.epochs,
            "train_images": summary.train_images, "wall_time_s": round(summary.wall_time_s),
        })
    if taught is not None and taught.teacher_params is not None:
        architecture, params, macs = taught.teacher, taught.teacher_params, taught.teacher_macs
    else:
        from kdpipe.models import checkpoint_meta, count_macs, count_params, load_checkpoint

        model = load_checkpoint(teacher)
        meta = checkpoint_meta(model)
        architecture, params = meta.model, count_params(model)
        macs = count_macs(model, (1, *meta.input_shape))
    top1 = taught.teacher_top1 if taught is not None else None
    rows.insert(0, {
        "name": "teacher", "architecture": architecture, "method": "pretrained",
        "top1": None if top1 is None else round(top1, 2), "params": params, "macs": macs,
    })
    return rows


def artifact_rows(artifacts: list[Path]) -> list[dict[str, Any]]:
    from kdpipe.export.metadata import read_metadata

    rows = []
    for path in artifacts:
        meta = read_metadata(path)
        parity = meta.parity
        if parity and parity.checked:
            agree = f"{parity.top1_agreement:.2f}% / {parity.max_abs_logit_diff:.3g}"
        else:
            agree = f"not checked: {parity.reason}" if parity else "not checked"
        rows.append({
            "file": f"{path.parent.name}/{path.name}", "format": meta.format,
            "quantization": meta.quantization, "size_kib": round(meta.size_bytes / 1024, 1),
            "parity": agree,
            "artifact_top1": (round(parity.artifact_top1, 2) if parity and parity.checked
                              else None),
        })
    return rows


def _timing(rows: list[BenchRow]) -> list[str]:
    """Noisy rows and same-architecture runs that disagree on latency, as a list (or nothing)."""
    notes = timing_notes(rows)
    return ["**Latency caveats:**", "", *[f"- {note}" for note in notes], ""] if notes else []


FAILED_COLUMNS = [("model", "Model"), ("target", "Target"), ("quantize", "Quantization"),
                  ("reason", "Why it failed (not exported, not benched)")]


def write_pipeline_report(out: Path, *, config: dict[str, Any], teacher: Path,
                          students: dict[str, Path], artifacts: list[Path],
                          bench_dir: Path, failed: list[dict[str, Any]] | None = None,
                          constraints: Constraints | None = None) -> Path:
    """Write `index.md` and `pipeline.json` into `out`; returns the index path. `failed` lists
    the export jobs that failed (model, target, quantize, reason); `constraints` choose the
    recommended artifact at the end."""
    failed = failed or []
    models = model_rows(teacher, students)
    exported = artifact_rows(artifacts)
    failures = (["**Failed exports** (a re-run of the pipeline retries only these):", "",
                 markdown_table(failed, FAILED_COLUMNS)] if failed else [])
    bench = load_bench_report(bench_dir / REPORT_FILES["json"])
    plot = os.path.relpath(bench_dir / REPORT_FILES["plot"], out)
    lines = [
        "# kdpipe pipeline report", "",
        f"Teacher: `{teacher}`. Config: `config.json`. Machine: {bench.machine.get('cpu', '?')}, "
        f"{plural(bench.machine.get('threads', '?'), 'thread')}.", "",
        "## 1. Models (test top-1 on the run's test split)", "",
        markdown_table(models, MODEL_COLUMNS),
        "## 2. Exported artifacts", "",
        markdown_table(exported, ARTIFACT_COLUMNS) if exported else "(no artifacts)\n",
        *failures,
        "## 3. Accuracy, size and latency per runtime", "", bench_table(bench.rows), "",
        f"![accuracy vs latency]({plot})", "",
        *_timing(bench.rows),
        f"Full bench report: `{os.path.relpath(bench_dir / REPORT_FILES['markdown'], out)}`.", "",
        *recommend.markdown(recommend.recommend(bench.rows, constraints)), "",
    ]
    index = out / "index.md"
    atomic.write_text(index, "\n".join(lines))
    atomic.write_json(out / "pipeline.json", {
        "schema_version": SCHEMA_VERSION, "config": config, "models": models,
        "artifacts": exported, "failed_exports": failed, "bench": bench.to_json(),
    })
    return index
