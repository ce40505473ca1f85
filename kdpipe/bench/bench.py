"""`kdpipe bench`: every file in its runtimes, one report (Markdown, JSON schema v1, PNG).

    report, files = run_bench(["model.pt", "model.onnx"], BenchConfig(batch_sizes=[1, 32]))

For each artifact, every runtime that runs its format is tried (or those named in `runtimes`):
a runtime that cannot run here becomes a `skipped` row with the reason, one that breaks a `failed`
row with the error; nothing is silently dropped. Bad input (a missing file, an unknown kind of
file, a model for other classes, an unreachable device) is a `KdpipeError` before anything is
written, so there is never a partial report.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from kdpipe.bench import ssh  # noqa: F401  (registers the ssh:// device)
from kdpipe.bench.config import BenchConfig
from kdpipe.bench.devices import (
    Device,
    LabelledImages,
    Plan,
    RunOutcome,
    open_device,
)
from kdpipe.config import import_modules
from kdpipe.errors import KdpipeError
from kdpipe.models import check_fits_data
from kdpipe.progress import progress_bar
from kdpipe.report.bench_report import write_bench_report
from kdpipe.report.schema import BenchReport, BenchRow
from kdpipe.runtime import Runtime, runtimes_for
from kdpipe.runtime.artifact import Artifact, open_artifact
from kdpipe.runtime.base import default_threads
from kdpipe.runtime.latency import INPUT_SEED, environment_notes


def run_bench(paths: Sequence[str | Path],
              config: BenchConfig) -> tuple[BenchReport, dict[str, Path]]:
    """Bench every file, write the report into `config.out`; returns it and its file paths."""
    if not paths:
        raise KdpipeError("nothing to bench: pass one or more artifacts or checkpoints")
    import_modules(config.imports)  # before a checkpoint names a model they register
    artifacts = [open_artifact(p) for p in without_sidecars(paths)]
    images = load_test_images(config, artifacts) if _wants_images(config) else None
    plan = Plan(threads=config.threads or default_threads(),
                batch_sizes=tuple(dict.fromkeys(config.batch_sizes)), warmup=config.warmup,
                iters=config.iters,
                time_budget_s=config.time_budget_s, min_time_s=config.min_time_s,
                memory=config.memory, images=images, imports=tuple(config.imports))
    with _torch_threads_restored(), open_device(config.device, _device_options(config)) as device:
        work = [(a, r) for a in artifacts for r in chosen_runtimes(a, config, device)]
        unrun = [a for a in artifacts if not any(a is w for w, _ in work)]
        device.prepare(work)
        rows, notes = bench_all(device, work, plan, config.progress)
        if config.device == "local":
            notes += environment_notes(os.environ)
        rows += [row for a in unrun for row in _no_runtime_rows(a, config, plan)]
        report = BenchReport(
            device=config.device if config.device == "local" else device.label,
            machine=device.machine(plan.threads),
            host=_host(device),
            runtimes=device.versions(_unique_runtimes(work)),
            protocol=protocol(plan),
            data=_data_record(images, config),
            notes=notes,
            rows=rows,
            created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
    return report, write_bench_report(report, config.out, config.constraints())


def chosen_runtimes(artifact: Artifact, config: BenchConfig, device: Device) -> list[Runtime]:
    """The runtimes named by `--runtimes`, else every runtime of the file's format that runs on
    the device: a phone over ssh gets no TensorRT or OpenVINO rows it could never run. A file
    that no runtime on the device runs keeps them all, so its rows say why each was skipped."""
    every = runtimes_for(artifact, config.runtimes or None)
    if config.runtimes:
        return every
    return [r for r in every if device.runs(r)] or every


def without_sidecars(paths: Sequence[str | Path]) -> list[Path]:
    """`paths` less each `<artifact>.json` sidecar given together with its artifact, so that a
    shell glob (`kdpipe bench export/*`) benches the files, not their metadata. A sidecar alone
    is kept, and refused by `open_artifact` with the reason."""
    given = {Path(p) for p in paths}
    return [Path(p) for p in paths
            if not (Path(p).suffix == ".json" and Path(p).with_suffix("") in given)]


def bench_all(device: Device, work: list[tuple[Artifact, Runtime]], plan: Plan,
              show_progress: bool) -> tuple[list[BenchRow], list[str]]:
    """Run each (artifact, runtime) on the device, with a progress bar; rows and report notes."""
    rows: list[BenchRow] = []
    notes: list[str] = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task("bench", total=len(work), info="")
        for artifact, rt in work:
            label = device.runtime_label(rt)
            bar.update(task, info=escape(f"{artifact.name} on {label}"))
            outcome = device.run(artifact, rt, plan)
            rows += rows_of(artifact, label, plan.batch_sizes, outcome)
            notes += [n for n in [*outcome.notes, rt.note if outcome.status == "ok" else ""]
                      if n and n not in notes]
            bar.advance(task)
    return rows, notes


def rows_of(artifact: Artifact, runtime_label: str, batch_sizes: Sequence[int],
            outcome: RunOutcome) -> list[BenchRow]:
    """One row per batch size: measured, or skipped/failed with the reason."""
    base = dict(name=artifact.label, runtime=runtime_label, format=artifact.format,
                quantization=artifact.quantization, top1=outcome.top1, params=artifact.params,
                macs=artifact.macs, size_bytes=artifact.size_bytes)
    rows = []
    for b in batch_sizes:
        stats = outcome.latency.get(b)
        if outcome.status != "ok":
            rows.append(BenchRow(**base, batch_size=b, status=outcome.status,
                                 reason=outcome.reason))
        elif stats is None:
            rows.append(BenchRow(**base, batch_size=b, status="skipped",
                                 reason=outcome.skipped_batches.get(b, "not run")))
        else:
            rows.append(BenchRow(**base, batch_size=b, p50_ms=stats.p50_ms, p90_ms=stats.p90_ms,
                                 p99_ms=stats.p99_ms, throughput_ips=stats.throughput_ips,
                                 peak_rss_mb=outcome.peak_rss_mb, reason=outcome.reason))
    return rows


def failed_runs(report: BenchReport) -> list[tuple[str, str, str]]:
    """(file, runtime, reason) of every run that should have worked and did not, once each
    (its rows, one per batch size, share the reason)."""
    return list(dict.fromkeys((r.name, r.runtime, r.reason) for r in report.rows
                              if r.status == "failed"))


def load_test_images(config: BenchConfig, artifacts: list[Artifact]) -> LabelledImages:
    """The (stratified subset of the) test split, checked against every artifact's labels."""
    from kdpipe.data import default_data_path, load_dataset, subset

    try:
        ds = load_dataset(config.data or default_data_path(), download=config.download,
                          cache_dir=config.cache_dir, progress=config.progress)
    except KdpipeError as e:
        raise KdpipeError(f"{e}; or pass --no-accuracy to measure latency only") from None
    limit = config.limit_test
    if config.device != "local" and config.remote_accuracy:
        limit = min(limit or config.remote_accuracy, config.remote_accuracy)
    if limit is not None:
        ds = subset(ds, limit_test=limit)
    images = LabelledImages(images=ds.test_images.numpy(), labels=ds.test_labels.numpy(),
                        classes=tuple(ds.classes), source=ds.source)
    for artifact in artifacts:
        check_compatible(artifact, images)
    return images


def check_compatible(artifact: Artifact, images: LabelledImages) -> None:
    """A clear error when a file was made for other classes or another image size."""
    check_fits_data(str(artifact.path), artifact.classes, artifact.input_shape, images.classes,
                    images.images.shape[1:], hint="pass the matching --data or --no-accuracy")


def protocol(plan: Plan) -> dict[str, Any]:
    """How the latency numbers were taken (the report's `protocol` record)."""
    return {
        "warmup": plan.warmup,
        "iters": plan.iters,
        "time_budget_s": plan.time_budget_s,
        "min_time_s": plan.min_time_s,
        "threads": plan.threads,
        "batch_sizes": list(plan.batch_sizes),
        "input": f"one pre-allocated float32 batch, uniform [0, 1), numpy seed {INPUT_SEED}",
        "timer": "time.perf_counter_ns around each call (after a device sync on GPUs)",
        "percentiles": "numpy.percentile, linear interpolation",
        "imports": list(plan.imports),  # user modules that registered the models (--import)
    }


def _wants_images(config: BenchConfig) -> bool:
    """Local benches score every file; remote ones only when asked to ship test images."""
    if config.device == "local":
        return config.accuracy
    return config.accuracy and config.remote_accuracy > 0


def _device_options(config: BenchConfig) -> dict[str, Any]:
    return dict(ssh_key=config.ssh_key, remote_python=config.remote_python,
                ssh_options=tuple(config.ssh_options), connect_timeout_s=config.connect_timeout_s,
                remote_timeout_s=config.remote_timeout_s, remote_accuracy=config.remote_accuracy)


def _no_runtime_rows(artifact: Artifact, config: BenchConfig, plan: Plan) -> list[BenchRow]:
    """A file that none of the chosen runtimes runs still gets its (skipped) rows."""
    wanted = ", ".join(config.runtimes) or "any registered runtime"
    outcome = RunOutcome(status="skipped", reason=f"{wanted} does not run {artifact.format} files")
    return rows_of(artifact, "-", plan.batch_sizes, outcome)


def _unique_runtimes(work: list[tuple[Artifact, Runtime]]) -> list[Runtime]:
    seen: dict[str, Runtime] = {}
    for _, rt in work:
        seen.setdefault(rt.name, rt)
    return list(seen.values())


def _host(device: Device) -> dict[str, Any] | None:
    """The machine kdpipe ran on, recorded when the numbers come from another device."""
    if device.label == "local":
        return None
    from kdpipe.runinfo import environment

    return environment()


def _data_record(images: LabelledImages | None, config: BenchConfig) -> dict[str, Any] | None:
    if images is None:
        return None
    n = len(images.labels)
    if config.device != "local":
        n = min(n, config.remote_accuracy)
    return {"source": images.source, "n_test": n}


@contextlib.contextmanager
def _torch_threads_restored() -> Iterator[None]:
    """Runtimes set PyTorch's global thread count; give the caller's back afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
