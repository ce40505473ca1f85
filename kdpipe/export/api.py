"""`export_checkpoint`: checkpoint -> checked artifacts + metadata, for the CLI and the pipeline.

For each (target, quantization) job: wrap the model with its normalization, export into a
staging folder inside `out`, run the artifact in its own runtime on stratified test images
(the parity check), and only then move it to `out` with its JSON sidecar. A failing artifact is
deleted, never published; the run goes on with the other jobs and then raises `ExportFailed`.

A checkpoint of quantization-aware distillation (`kdpipe distill --qat`) carries learned INT8
activation ranges, which travel with its model (`kdpipe.models.checkpoint.learned_quantization`):
the int8 exports of targets that take them (`learns_int8`: onnx, ort, executorch) use them
instead of post-training calibration, and their sidecar's `calibration.method` says
"learned (QAT)"; other targets calibrate as usual and say so in a note.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

import kdpipe
from kdpipe import runlock
from kdpipe.atomic import atomic_path, write_failure, write_json
from kdpipe.config import comma_list, from_dict
from kdpipe.errors import KdpipeError
from kdpipe.export.base import PRECISION, Calibration, Exported, Normalized, Target, with_io
from kdpipe.export.config import ExportConfig, Job, batch_sizes, plan
from kdpipe.export.metadata import (
    KIND,
    ArtifactMetadata,
    ParityReport,
    artifact_sha256,
    companion_files,
    path_size,
    sidecar_path,
)
from kdpipe.export.parity import check_parity
from kdpipe.models import check_fits_data
from kdpipe.models.checkpoint import LearnedQuantization, learned_quantization
from kdpipe.progress import console
from kdpipe.runinfo import cpu_facts

if TYPE_CHECKING:  # only for annotations: kdpipe.data and models import their heavy parts
    from kdpipe.data import Dataset
    from kdpipe.models import CheckpointMeta

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped"]
REFERENCE_BATCH = 500


@dataclass
class ExportResult:
    """One artifact (or one skipped or failed job): where it is, and its full metadata."""

    target: str
    quantize: str
    status: Status
    path: Path | None = None
    metadata: ArtifactMetadata | None = None
    reason: str = ""

    @property
    def parity(self) -> ParityReport | None:
        return self.metadata.parity if self.metadata else None


class ExportFailed(KdpipeError):
    """Some artifact failed its export or parity check; `results` holds every job's outcome."""

    def __init__(self, results: list[ExportResult]) -> None:
        self.results = results
        failed = [r for r in results if r.status == "failed"]
        lines = "; ".join(f"{r.target} {r.quantize}: {r.reason}" for r in failed)
        super().__init__(f"{len(failed)} export(s) failed and were not written: {lines}")


@dataclass
class ParitySet:
    """The parity images (float32 NCHW in [0, 1]), their labels and the PyTorch logits."""

    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    data: str


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    target: str = "all",
    quantize: str | None = None,
    out_dir: str | os.PathLike[str] = "export",
    *,
    dataset: Dataset | None = None,
    **options: Any,
) -> list[ExportResult]:
    """Export `checkpoint` to `target` (a name, a comma list, or "all") at `quantize`.

    `target` and `quantize` may be lists or comma-separated strings. `options` are the other
    `ExportConfig` fields (batch_sizes=[1, 32] or "1,32", calibration_size=512, parity_size=1000,
    parity=True, calibration_data=None, name=None, seed=0, download=False).
    `dataset` may be an in-memory `kdpipe.data.Dataset` instead of `calibration_data`.
    Raises `KdpipeError` before any work for an impossible request, and `ExportFailed` after
    the run when an artifact failed (nothing is written for it).
    """
    values = {"target": target, "quantize": quantize, "out": str(out_dir), **options}
    lists = {"target": str, "quantize": str, "batch_sizes": int}
    values.update({k: comma_list(values[k], item, f"--{k.replace('_', '-')}")
                   for k, item in lists.items() if isinstance(values.get(k), str)})
    return run_export(checkpoint, from_dict(ExportConfig, values), dataset=dataset)


def run_export(checkpoint: str | os.PathLike[str], config: ExportConfig,
               dataset: Dataset | None = None) -> list[ExportResult]:
    """`export_checkpoint` with a ready `ExportConfig` (what `kdpipe export` calls)."""
    from kdpipe.models import checkpoint_meta, load_checkpoint

    jobs, skipped = plan(config)
    sizes = batch_sizes(config)
    results = [ExportResult(t, q, "skipped", reason=why) for t, q, why in skipped]
    for r in results:
        console.print(f"skipped {r.target} {r.quantize}: {r.reason}", highlight=False)
    model = load_checkpoint(checkpoint)
    meta = checkpoint_meta(model)
    wrapped = Normalized(model, meta.mean, meta.std).eval()
    base = base_metadata(checkpoint, model, meta)
    needs_calibration = any(job.target.needs_calibration(job.quantize) for job in jobs)
    ds = _dataset(config, meta, dataset) if config.parity or needs_calibration else None
    test = _test_images(ds, wrapped, config) if config.parity else None
    calibration = _calibration(ds, config) if needs_calibration else None
    learned = learned_quantization(model)
    if learned is not None and any(job.quantize == "int8" for job in jobs):
        console.print(f"the checkpoint carries INT8 activation ranges learned by "
                      f"quantization-aware distillation ({len(learned.activations)} tensors): "
                      "int8 exports use them where the target can", highlight=False)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_staging(out)
    stem = config.name or meta.model
    for job in jobs:
        results += _run_job(job, wrapped, base, test, calibration, out, stem, sizes)
    if any(r.status == "failed" for r in results):
        raise ExportFailed(results)
    return results


def base_metadata(checkpoint: str | os.PathLike[str], model: nn.Module,
                  meta: CheckpointMeta) -> ArtifactMetadata:
    """What every artifact of this checkpoint shares (target fields are filled per job)."""
    from kdpipe.models import count_macs, count_params

    return ArtifactMetadata(
        format="", runtime="", quantization="", classes=list(meta.classes), input_name="",
        output_name="", input_shape=list(meta.input_shape), input_shape_batched=[],
        model=meta.model, num_classes=len(meta.classes), mean=list(meta.mean),
        std=list(meta.std), model_kwargs=dict(meta.model_kwargs), params=count_params(model),
        macs=count_macs(model, (1, *meta.input_shape)), source_checkpoint=str(checkpoint),
        source_sha256=meta.source_sha256, source_format=meta.format,
        preprocessing=reference_preprocessing(meta.input_shape), kdpipe_version=kdpipe.__version__,
    )


def reference_preprocessing(input_shape: list[int]) -> dict[str, str]:
    """How kdpipe's own numbers fed the model (decoder, resize, color, scale): an app that
    decodes or resizes differently moves a few percent of predictions."""
    from kdpipe.data.decode import decoder_description

    _, height, width = input_shape
    return {
        "decoder": decoder_description(),
        "resize": f"bilinear (PIL) to {width}x{height}, only for images of another size",
        "color": "RGB, 8 bits per channel",
        "scale": "pixel / 255 -> float32 in [0, 1]; no mean/std (folded into the model)",
    }


def artifact_name(stem: str, precision: str, suffix: str) -> str:
    """`resnet20.onnx` for fp32, `resnet20.int8.onnx` otherwise."""
    return f"{stem}{suffix}" if precision == "fp32" else f"{stem}.{precision}{suffix}"


def _run_job(job: Job, model: nn.Module, base: ArtifactMetadata, test: ParitySet | None,
             calibration: Calibration | None, out: Path, stem: str,
             batch_sizes: list[int]) -> list[ExportResult]:
    target, quantize = job.target, job.quantize
    precision = PRECISION[quantize]
    uses_calibration = target.needs_calibration(quantize)
    described, notes = _describe_calibration(target, quantize, calibration if uses_calibration
                                             else None, learned_quantization(model))
    meta = replace(base, format=target.name, runtime=target.runtime, quantization=precision,
                   calibration=described, notes=base.notes + notes, versions=_versions(target),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    console.print(f"{target.name} {precision}: exporting", highlight=False)
    name = artifact_name(stem, precision, target.suffix)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    # Locked while in use, so the next export into `out` can tell a killed run's staging folder
    # (lock free: removed) from a live one's (kept).
    lock = runlock.acquire(staging)
    try:
        try:
            exported = target.export(model, meta, quantize, calibration if uses_calibration
                                     else None, staging / name, batch_sizes)
        except Exception as e:  # noqa: BLE001 - one target's failure must not stop the others
            # A full disk fails the whole run, with its real cause, not this job with whatever
            # the library made of its truncated file ("Wire format was corrupt").
            failure = write_failure(e, staging / name)
            if failure is not None and failure.errno in NO_SPACE:
                raise OSError(failure.errno, failure.strerror, str(out / name)) from e
            log.exception("export to %s failed", target.name)
            results = [ExportResult(target.name, quantize, "failed",
                                    reason=f"export failed: {type(e).__name__}: {e}")]
        else:
            results = [_check_and_publish(target, quantize, item, meta, test, out, batch_sizes)
                       for item in exported]
    finally:
        lock.release()  # first: Windows cannot delete the open lock file
        shutil.rmtree(staging, ignore_errors=True)
    if any(r.status == "failed" for r in results):
        removed = _remove_stale(out, target, precision, stem, base.source_sha256)
        for r in results:
            if r.status == "failed" and removed:
                r.reason += (f"; removed the earlier {', '.join(removed)} of another checkpoint, "
                             "so it is not taken for this one's")
    return results


def _describe_calibration(target: Target, quantize: str, calibration: Calibration | None,
                          learned: LearnedQuantization | None
                          ) -> tuple[dict[str, Any] | None, list[str]]:
    """The sidecar's `calibration` and notes for one job: learned ranges where the target takes
    a QAT checkpoint's (the images then only calibrate what training did not quantize)."""
    if calibration is None:
        return None, []
    described = calibration.describe()
    if learned is None or quantize != "int8":
        return described, []
    if target.learns_int8:
        return {**described, "method": "learned (QAT)",
                "learned_activations": len(learned.activations),
                "scheme": learned.scheme.get("name", "")}, []
    return described, [f"the checkpoint carries INT8 ranges learned by quantization-aware "
                       f"distillation; the {target.name} export does not take them and "
                       "calibrated post-training instead"]


STAGING_PREFIX = ".export-"  # tempfile.mkdtemp's folders for one job each, inside --out
STAGING_GRACE_S = 60  # an unlocked staging folder younger than this may be a starting export's
NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _clean_staging(out: Path) -> None:
    """Remove the staging folders that killed exports left in `out` (kdpipe's own, by name);
    one that a live export holds is left alone."""
    for folder in sorted(out.glob(STAGING_PREFIX + "*")):
        if not folder.is_dir():
            continue
        locked_before = (folder / runlock.LOCK_NAME).exists()
        if not locked_before and time.time() - folder.stat().st_mtime < STAGING_GRACE_S:
            continue  # maybe made a moment ago by an export that has not locked it yet
        try:
            runlock.acquire(folder).release()
        except KdpipeError:  # a live export is using it
            continue
        shutil.rmtree(folder, ignore_errors=True)
        console.print(f"removed {folder}, the staging folder of an export that was stopped",
                      highlight=False, soft_wrap=True)


def _remove_stale(out: Path, target: Target, precision: str, stem: str,
                  source_sha256: str) -> list[str]:
    """Remove the artifacts in `out` that this failed job would have replaced (its file name,
    or its per-batch-size names) when their sidecar says another checkpoint made them: left
    there, they would be benched and deployed as this model's. Returns their names."""
    pattern = re.compile(re.escape(artifact_name(stem, precision, "")) + r"(\.b\d+)?"
                         + re.escape(target.suffix))
    removed = []
    for sidecar in sorted(out.glob("*.json")):
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        artifact = sidecar.with_name(sidecar.name[: -len(".json")])
        if (not isinstance(record, dict) or record.get("kind") != KIND
                or not pattern.fullmatch(artifact.name)
                or record.get("source_sha256") in (None, source_sha256)):
            continue
        for path in (artifact, *companion_files(artifact), sidecar):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        console.print(f"removed {artifact} and its sidecar: exported from another checkpoint "
                      f"(sha256 {str(record.get('source_sha256'))[:12]}...)", highlight=False,
                      soft_wrap=True)
        removed.append(artifact.name)
    return removed


def _check_and_publish(target: Target, quantize: str, exported: Exported,
                       meta: ArtifactMetadata, test: ParitySet | None, out: Path,
                       batch_sizes: list[int]) -> ExportResult:
    """Parity-check one staged file; publish it with its sidecar if it passes."""
    full = with_io(meta, exported)
    parity = _parity(target, exported, full, test, batch_sizes)
    _print_parity(exported.path.name, parity)
    if parity.passed is False:
        return ExportResult(target.name, quantize, "failed", metadata=replace(full, parity=parity),
                            reason=f"{exported.path.name}: parity failed: {parity.reason}")
    notes = full.notes + ([f"numerical parity not checked: {parity.reason}"]
                          if not parity.checked else [])
    dest = out / exported.path.name
    full = replace(full, file=dest.name, size_bytes=path_size(exported.path),
                   sha256=artifact_sha256(exported.path), parity=parity, notes=notes)
    # The old sidecar goes before its file is replaced: never a new file under an old record.
    sidecar_path(dest).unlink(missing_ok=True)
    # Companion files (an OpenVINO IR's weights) go first, so a published graph has its weights.
    for companion in companion_files(exported.path):
        with atomic_path(out / companion.name) as tmp:
            os.replace(companion, tmp)
    with atomic_path(dest) as tmp:
        os.replace(exported.path, tmp)
    write_json(sidecar_path(dest), full.to_dict())
    console.print(f"  -> {dest} ({full.size_bytes / 2**10:,.1f} KiB)", highlight=False)
    return ExportResult(target.name, quantize, "ok", path=dest, metadata=full)


def _parity(target: Target, exported: Exported, meta: ArtifactMetadata,
            test: ParitySet | None, batch_sizes: list[int]) -> ParityReport:
    """Run the staged file in its runtime, the same class `kdpipe bench` times, and compare."""
    from kdpipe.runtime import runtime
    from kdpipe.runtime.artifact import from_export_metadata
    from kdpipe.runtime.base import default_threads

    if test is None:
        return ParityReport.not_checked("skipped with --no-parity")
    rt = runtime(target.runtime)
    artifact = from_export_metadata(exported.path, meta.to_dict())
    available, why = rt.available_for(artifact)
    if not available:
        return ParityReport.not_checked(why + target.unchecked_note)
    threads = default_threads()
    try:
        session = rt.load(artifact, threads)
        simulated = rt.simulated(artifact, threads, target.simulation_source(exported))
    except Exception as e:  # noqa: BLE001 - an artifact its runtime cannot load fails the check
        return ParityReport(checked=True, passed=False,
                            reason=f"its runtime cannot load it: {type(e).__name__}: {e}")
    report = check_parity(session.run, exported, test.images, test.labels, test.reference,
                          meta.quantization, batch_sizes, data=test.data,
                          simulated=simulated.run if simulated is not None else None,
                          output_kind=meta.output_kind)
    report.machine = {**cpu_facts(), "runtime": rt.name, "runtime_version": rt.version() or ""}
    return report


def _print_parity(name: str, p: ParityReport) -> None:
    if not p.checked:
        console.print(f"  {name}: parity not checked: {p.reason}", highlight=False)
        return
    if p.max_abs_logit_diff is None:
        console.print(f"  {name}: parity FAILED: {p.reason}", highlight=False)
        return
    verdict = "ok" if p.passed else f"FAILED: {p.reason}"
    kernels = (f", int8 kernels vs float simulation {p.kernel_agreement:.2f}%"
               if p.kernel_agreement is not None else "")
    console.print(
        f"  {name}: parity on N={p.n} test images: max |diff| {p.max_abs_logit_diff:.3g} "
        f"({p.compared}), top-1 agreement {p.top1_agreement:.2f}%{kernels}, top-1 PyTorch "
        f"{p.pytorch_top1:.2f}% vs artifact {p.artifact_top1:.2f}% ({p.rule}): {verdict}",
        highlight=False,
    )


def _dataset(config: ExportConfig, meta: CheckpointMeta, dataset: Dataset | None) -> Dataset:
    """The data set for calibration and parity, checked against the checkpoint."""
    from kdpipe.data import default_data_path, load_dataset

    if dataset is None:
        path = config.calibration_data or default_data_path()
        if path is None and not config.download:
            raise KdpipeError(
                "no data for the parity check and int8 calibration: pass --calibration-data PATH "
                "(an ImageFolder tree with train/ and test/, a .tar.gz of one, or a "
                "cifar-10-batches-py folder) or --download; fp32/fp16 exports can skip the check "
                "with --no-parity"
            )
        dataset = load_dataset(path, download=config.download)
    check_fits_data("the checkpoint", meta.classes, meta.input_shape, dataset.classes,
                    dataset.test_images.shape[1:], hint="pass its own data with --calibration-data")
    return dataset


def _test_images(dataset: Dataset, model: nn.Module, config: ExportConfig) -> ParitySet:
    from kdpipe.data import subset

    part = subset(dataset, limit_test=config.parity_size, seed=config.seed)
    images = _as_unit_floats(part.test_images)
    console.print(f"parity check: N={len(images)} test images (stratified) from "
                  f"{dataset.source}", highlight=False)
    return ParitySet(images=images, labels=part.test_labels.numpy(),
                      reference=_logits(model, images), data=f"{dataset.source} test split")


def _calibration(dataset: Dataset, config: ExportConfig) -> Calibration:
    from kdpipe.data import subset

    part = subset(dataset, limit_train=config.calibration_size, seed=config.seed)
    return Calibration(images=_as_unit_floats(part.train_images),
                       data=f"{dataset.source} train split", seed=config.seed)


def _as_unit_floats(images_uint8: torch.Tensor) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]: the folded model's input (its own preprocessing)."""
    return np.ascontiguousarray((images_uint8.float() / 255).numpy())


@torch.inference_mode()
def _logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    chunks = [model(torch.from_numpy(images[i:i + REFERENCE_BATCH]))
              for i in range(0, len(images), REFERENCE_BATCH)]
    return torch.cat(chunks).float().numpy()


def _versions(target: Target) -> dict[str, str]:
    """The exporting libraries' versions, for the metadata."""
    versions = {name: _version(name) for name in ("torch", *target.libraries)}
    return {name: v for name, v in versions.items() if v}


def _version(distribution: str | None) -> str:
    """A distribution's installed version ("" when it is not installed or not named)."""
    if not distribution:
        return ""
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return ""


def read_embedded_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata stored inside an artifact (None for formats without a place, `.pte`)."""
    from kdpipe.export.targets import TARGETS

    path = Path(path)
    for name in TARGETS.names():
        target = TARGETS.get(name)
        if path.name.endswith(target.suffix):
            return target.read_embedded(path)
    suffixes = ", ".join(TARGETS.get(n).suffix for n in TARGETS.names())
    raise KdpipeError(f"{path} is not an export artifact (kdpipe writes {suffixes})")


def print_results(results: list[ExportResult]) -> None:
    """A table of the run (one row per artifact, skipped or failed job), then the reasons."""
    from rich import box
    from rich.table import Table

    # Narrow headers: logs and CI render at 80 columns. diff = max |artifact - PyTorch| over the
    # parity images; agree = top-1 agreement (int8 needs >= MIN_INT8_AGREEMENT); top1 = the
    # artifact's accuracy (PyTorch's goes in the caption); kern = int8 kernels vs the file's
    # float simulation; NNAPI = nodes ONNX Runtime Mobile's Android provider takes.
    table = Table("artifact", "status", "KiB", "diff", "agree%", "top1%", "kern%", "NNAPI",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.columns[0].no_wrap = True
    reasons, references = [], set()
    for r in results:
        name = r.path.name if r.path else f"{r.target} {r.quantize}"
        meta, p = r.metadata, r.parity
        numbers = ["", "", "", ""]
        if p is not None and p.checked and p.max_abs_logit_diff is not None:
            kernels = "" if p.kernel_agreement is None else f"{p.kernel_agreement:.1f}"
            numbers = [f"{p.max_abs_logit_diff:.0e}", f"{p.top1_agreement:.2f}",
                       f"{p.artifact_top1:.2f}", kernels]
            references.add((p.n, f"{p.pytorch_top1:.2f}"))
        usability = (meta.details.get("mobile_usability") if meta else None) or {}
        nnapi = usability.get("NNAPI")
        nnapi_cell = f"{nnapi['supported']}/{nnapi['nodes']}" if nnapi else ""
        size = f"{meta.size_bytes / 2**10:,.0f}" if meta and meta.size_bytes else ""
        table.add_row(name, r.status, size, *numbers, nnapi_cell)
        why = r.reason or (p.reason if p else "")
        if why:
            reasons.append(f"{name}: {why}")
    if references:
        table.caption = "; ".join(f"PyTorch top-1 {top1}% on the same N={n} test images"
                                  for n, top1 in sorted(references))
    console.print(table)
    for line in reasons:
        console.print(line, highlight=False, markup=False)
