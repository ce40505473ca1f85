"""The parity check: run an artifact in its own runtime and compare it with the PyTorch model.

The rule: an fp32 artifact agrees with PyTorch on >= 99.9% of top-1 predictions; a quantized one
(fp16, int8) loses at most 1 point of top-1 accuracy; an int8 one must also agree with PyTorch on
>= 97% of top-1s (a file can keep its accuracy while changing one prediction in ten, as int8
kernels that saturate do) and, where the runtime can simulate the file's quantization in float,
its integer kernels must agree with that simulation on >= 98%. All are measured on the same
stratified test images, fed in the batch sizes the artifact was exported for, and the report
records the CPU they ran on: an int8 result holds for CPUs with the same instruction sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kdpipe.export.base import Exported
from kdpipe.export.metadata import ParityReport
from kdpipe.runtime.chunks import fit, run_in_chunks

MIN_AGREEMENT = 99.9  # percent of top-1 predictions, fp32 artifacts
MAX_TOP1_DROP = 1.0  # points of top-1 accuracy, quantized artifacts
MIN_INT8_AGREEMENT = 97.0  # percent of top-1 predictions shared with PyTorch, int8 artifacts
# Percent, optimized session vs the file's float simulation. Saturating U8S8 kernels moved 6-14%
# of a ResNet20's predictions (max |logit diff| 7-15); sound kernels round a few near-ties the
# other way (99.85% on ResNet20, 99.0% on 500 images through ResNet56, max |diff| 0.5).
MIN_KERNEL_AGREEMENT = 98.0
DEFAULT_CHUNK = 250  # images per call where the batch dimension is dynamic and unbounded


def min_agreement(precision: str) -> float | None:
    """The top-1 agreement with PyTorch an artifact of `precision` needs (None: no such gate)."""
    return {"fp32": MIN_AGREEMENT, "int8": MIN_INT8_AGREEMENT}.get(precision)


def rule_for(precision: str, kernels: bool = False) -> str:
    """The rule in words; `kernels`: the integer kernels were compared with the simulation."""
    if precision == "fp32":
        return f"top-1 agreement >= {MIN_AGREEMENT}%"
    rule = f"top-1 drop <= {MAX_TOP1_DROP} point"
    if precision == "int8":
        rule += f", agreement >= {MIN_INT8_AGREEMENT}%"
        if kernels:
            rule += f", kernels vs simulation >= {MIN_KERNEL_AGREEMENT}%"
    return rule


def check_parity(
    run: Callable[[np.ndarray], np.ndarray],
    exported: Exported,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    precision: str,
    batch_sizes: Sequence[int],
    data: str = "",
    *,
    simulated: Callable[[np.ndarray], np.ndarray] | None = None,
    output_kind: str = "logits",
) -> ParityReport:
    """Compare the artifact's outputs on `images` (float32 NCHW in [0, 1]) with `reference`
    logits of the PyTorch model. `run` is the runtime session's `run` (the class bench times);
    `simulated`, where the runtime has one, runs the same file with its quantization in float;
    `batch_sizes` are the sizes the export was asked to run."""
    sizes = runnable_sizes(exported, batch_sizes)
    try:
        for b in sizes:  # every requested size runs, whatever the chunking below uses
            run(fit(images, b))
        outputs = run_in_chunks(run, images, chunk_size(exported))
        simulated_outputs = (run_in_chunks(simulated, images, chunk_size(exported))
                             if simulated is not None else None)
    except Exception as e:  # noqa: BLE001 - a runtime error is a failed check, with its message
        return ParityReport(checked=True, n=len(images), data=data, passed=False,
                            rule=rule_for(precision), batch_sizes_run=sizes,
                            reason=f"the artifact failed to run: {type(e).__name__}: {e}")
    return compare(outputs, reference, labels, precision, output_kind, sizes, data,
                   simulated=simulated_outputs)


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray, precision: str,
            output_kind: str = "logits", batch_sizes_run: Sequence[int] = (),
            data: str = "", simulated: np.ndarray | None = None) -> ParityReport:
    """The parity numbers and verdict for artifact `outputs` against PyTorch `reference` logits
    (and, when given, against `simulated`: the same file with its quantization run in float)."""
    compared = "logits"
    if output_kind == "probabilities":
        compared = "log_probabilities"
        outputs = np.log(np.clip(outputs, 1e-12, None))
        reference = _log_softmax(reference)
    if outputs.shape != reference.shape:
        return ParityReport(checked=True, n=len(labels), data=data, compared=compared,
                            passed=False, rule=rule_for(precision),
                            reason=f"output shape {outputs.shape}, expected {reference.shape}")
    ours, theirs = outputs.argmax(1), reference.argmax(1)
    report = ParityReport(
        checked=True, n=len(labels), data=data, compared=compared,
        max_abs_logit_diff=float(np.abs(outputs.astype(np.float64) - reference).max()),
        top1_agreement=_percent(ours == theirs),
        pytorch_top1=_percent(theirs == labels),
        artifact_top1=_percent(ours == labels),
        batch_sizes_run=list(batch_sizes_run),
        rule=rule_for(precision),
        min_agreement=min_agreement(precision),
    )
    if simulated is not None and simulated.shape == outputs.shape:
        report.kernel_agreement = _percent(simulated.argmax(1) == outputs.argmax(1))
        report.kernel_max_abs_diff = float(np.abs(outputs.astype(np.float64) - simulated).max())
        report.rule = rule_for(precision, kernels=True)
    report.passed, report.reason = _verdict(report, precision)
    return report


def _verdict(report: ParityReport, precision: str) -> tuple[bool, str]:
    if not np.isfinite(report.max_abs_logit_diff):
        return False, "the artifact produced NaN or infinite outputs"
    if precision == "fp32":
        ok = report.top1_agreement >= MIN_AGREEMENT
        why = (f"top-1 agreement {report.top1_agreement:.2f}% is below {MIN_AGREEMENT}% "
               f"(max |logit diff| {report.max_abs_logit_diff:.3g})")
        return ok, "" if ok else why
    drop = report.pytorch_top1 - report.artifact_top1
    if drop > MAX_TOP1_DROP:
        return False, (f"top-1 accuracy dropped {drop:.2f} points ({report.pytorch_top1:.2f}% -> "
                       f"{report.artifact_top1:.2f}%), more than {MAX_TOP1_DROP}")
    if precision != "int8":
        return True, ""
    if report.top1_agreement < MIN_INT8_AGREEMENT:
        return False, (f"top-1 agreement with PyTorch {report.top1_agreement:.2f}% is below "
                       f"{MIN_INT8_AGREEMENT}% (max |logit diff| "
                       f"{report.max_abs_logit_diff:.3g}): the quantization changes too many "
                       "predictions")
    kernels = report.kernel_agreement
    if kernels is not None and kernels < MIN_KERNEL_AGREEMENT:
        return False, (f"this CPU's int8 kernels agree with the file's float simulation on only "
                       f"{kernels:.2f}% of top-1s (max |diff| {report.kernel_max_abs_diff:.3g}, "
                       f"below {MIN_KERNEL_AGREEMENT}%): they saturate or round differently "
                       "here")
    return True, ""


def runnable_sizes(exported: Exported, batch_sizes: Sequence[int]) -> list[int]:
    """The requested batch sizes this artifact runs (a fixed-batch file runs its own only)."""
    if exported.batch_sizes is not None:
        return list(exported.batch_sizes)
    bound = exported.max_batch_size
    return sorted({b for b in batch_sizes if bound is None or b <= bound})


def chunk_size(exported: Exported) -> int:
    if exported.batch_sizes is not None:
        return max(exported.batch_sizes)
    return min(DEFAULT_CHUNK, exported.max_batch_size or DEFAULT_CHUNK)


def _percent(mask: np.ndarray) -> float:
    return float(100.0 * mask.mean()) if mask.size else 0.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
