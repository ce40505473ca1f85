"""The parity check: run an artifact in its own runtime and compare it with the PyTorch model.

The rule: an fp32 artifact agrees with PyTorch on >= 99.9% of top-1 predictions; a quantized one
(fp16, int8) loses at most 1 point of top-1 accuracy. Both are measured on the same stratified
test images, fed in the batch sizes the artifact was exported for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kdpipe.export.base import Exported, Runner
from kdpipe.export.metadata import ParityReport

MIN_AGREEMENT = 99.9  # percent of top-1 predictions, fp32 artifacts
MAX_TOP1_DROP = 1.0  # points of top-1 accuracy, quantized artifacts
DEFAULT_CHUNK = 250  # images per call where the batch dimension is dynamic and unbounded


def rule_for(precision: str) -> str:
    if precision == "fp32":
        return f"top-1 agreement >= {MIN_AGREEMENT}%"
    return f"top-1 accuracy drop <= {MAX_TOP1_DROP} point"


def check_parity(
    runner: Runner,
    exported: Exported,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    precision: str,
    batch_sizes: Sequence[int],
    data: str = "",
) -> ParityReport:
    """Compare the artifact's outputs on `images` (float32 NCHW in [0, 1]) with `reference`
    logits of the PyTorch model; `batch_sizes` are the sizes the export was asked to run."""
    if runner.fn is None:
        return ParityReport.not_checked(runner.reason)
    sizes = runnable_sizes(exported, batch_sizes)
    try:
        for b in sizes:  # every requested size runs, whatever the chunking below uses
            runner.fn(_fit(images, b))
        outputs = run_in_chunks(runner.fn, images, chunk_size(exported))
    except Exception as e:  # noqa: BLE001 - a runtime error is a failed check, with its message
        return ParityReport(checked=True, n=len(images), data=data, passed=False,
                            rule=rule_for(precision), batch_sizes_run=sizes,
                            reason=f"the artifact failed to run: {type(e).__name__}: {e}")
    return compare(outputs, reference, labels, precision, runner.output_kind, sizes, data)


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray, precision: str,
            output_kind: str = "logits", batch_sizes_run: Sequence[int] = (),
            data: str = "") -> ParityReport:
    """The parity numbers and verdict for artifact `outputs` against PyTorch `reference` logits."""
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
    )
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
    ok = drop <= MAX_TOP1_DROP
    why = (f"top-1 accuracy dropped {drop:.2f} points ({report.pytorch_top1:.2f}% -> "
           f"{report.artifact_top1:.2f}%), more than {MAX_TOP1_DROP}")
    return ok, "" if ok else why


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


def run_in_chunks(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                  size: int) -> np.ndarray:
    """`fn` over `images` in chunks of exactly `size` (the last one padded, its padding dropped),
    so fixed-batch artifacts run too."""
    outputs = []
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        outputs.append(np.asarray(fn(_fit(chunk, size)))[: len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


def _fit(images: np.ndarray, size: int) -> np.ndarray:
    """Exactly `size` images: cut, or padded by repeating the first (a real image, not zeros)."""
    if len(images) >= size:
        return np.ascontiguousarray(images[:size])
    pad = np.repeat(images[:1], size - len(images), axis=0)
    return np.ascontiguousarray(np.concatenate([images, pad]))


def _percent(mask: np.ndarray) -> float:
    return float(100.0 * mask.mean()) if mask.size else 0.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
