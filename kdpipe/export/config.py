"""`ExportConfig`, filled by `kdpipe export` flags and config files, and the plan it makes.

`plan(config)` turns the requested targets and quantizations into (target, quantize) jobs and
refuses, in one message and before any work, an unknown name, an unsupported combination or a
missing optional package. With `--target all`, or several targets or quantizations at once, the
pairs that cannot be done are skipped with the reason instead, so `all` means "everything this
installation can export" and `--target onnx,executorch --quantize fp16,int8` does each pair it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdpipe.config import comma_list, option
from kdpipe.errors import KdpipeError

# The target registry (each target module imports PyTorch) loads when a plan or the support
# table is made, not when the CLI builds its flags from `ExportConfig`.
if TYPE_CHECKING:
    from kdpipe.export.base import Target

ALL = "all"


@dataclass
class ExportConfig:
    """Everything that decides an export run (the checkpoint is the command's argument)."""

    target: list[str] = option(help="torchscript, onnx, ort, coreml, executorch, a "
                               "comma-separated list, or all (all: skip what is unsupported or "
                               "not installed)", factory=lambda: [ALL])
    quantize: list[str] | None = option(None, "none, fp16 or int8, or a comma-separated list "
                                        "(default: each target's own: none, or fp16 for coreml)")
    out: Path = option(Path("export"), "folder for the artifacts and their .json metadata",
                       result=False)
    name: str | None = option(None, "file name stem of the artifacts (default: the model name)")
    batch_sizes: list[int] = option(help="comma-separated batch sizes the artifacts must run: "
                                    "one dynamic batch dimension where the format allows, else "
                                    "one file per size; 1 alone: a static shape (for phones)",
                                    factory=lambda: [1, 32])
    calibration_data: str | None = option(
        None, "data set whose train split calibrates int8 and whose test split checks parity: "
              "ImageFolder tree, .tar(.gz) of one, or cifar-10-batches-py folder "
              "(default: ../shared/datasets/cifar10-images.tar.gz if present)")
    download: bool = option(False, "let torchvision download CIFAR-10 (needs internet)")
    calibration_size: int = option(512, "training images (stratified) that calibrate int8")
    parity_size: int = option(1000, "test images (stratified) of the parity check")
    parity: bool = option(True, "check every artifact against PyTorch in its own runtime "
                                "(--no-parity skips it; the metadata then says so)")
    seed: int = option(0, "seed of the stratified calibration and parity subsets")


@dataclass(frozen=True)
class Job:
    target: Target
    quantize: str


def plan(config: ExportConfig) -> tuple[list[Job], list[tuple[str, str, str]]]:
    """(jobs to run, [(target, quantize, why skipped)]); raises `KdpipeError` before any work."""
    from kdpipe.export.targets import TARGETS

    names = _names(config.target, "--target")
    everything = names == [ALL]
    unknown = [n for n in names if n not in TARGETS and not everything]
    if unknown:
        raise KdpipeError(f"unknown export target {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(TARGETS.names())}, or all")
    targets = [TARGETS.get(n) for n in (TARGETS.names() if everything else names)]
    requested = _quantizations(config.quantize)
    # Several (target, quantize) pairs asked at once: do what can be done and list the rest,
    # as `all` does. Only a single explicit pair that cannot be done is an error.
    lenient = everything or len(targets) * max(len(requested), 1) > 1
    jobs, skipped, refusals = [], [], []
    for target in targets:
        ok, missing = target.available()
        for quantize in requested or [target.default_quantize]:
            why = missing if not ok else target.refusal(quantize)
            if why is None:
                jobs.append(Job(target, quantize))
            elif lenient:
                skipped.append((target.name, quantize, why))
            elif why not in refusals:
                refusals.append(why)
    if refusals:
        raise KdpipeError("; ".join(refusals))
    if not jobs:
        reasons = "; ".join(why for _, _, why in skipped)
        raise KdpipeError(f"nothing to export: {reasons}")
    check_sizes(config)
    return jobs, skipped


def batch_sizes(config: ExportConfig) -> list[int]:
    """The requested batch sizes, sorted and unique; positive integers only."""
    sizes = sorted(set(config.batch_sizes))
    if not sizes or sizes[0] < 1:
        raise KdpipeError(f"--batch-sizes must be positive integers like 1,32; got "
                          f"{config.batch_sizes}")
    return sizes


def check_sizes(config: ExportConfig) -> None:
    batch_sizes(config)
    for flag, value in (("--calibration-size", config.calibration_size),
                        ("--parity-size", config.parity_size)):
        if value < 1:
            raise KdpipeError(f"{flag} must be at least 1, got {value}")


def _quantizations(values: list[str] | None) -> list[str]:
    from kdpipe.export.base import QUANTIZE_CHOICES

    if values is None:
        return []
    values = _names(values, "--quantize")
    unknown = [v for v in values if v not in QUANTIZE_CHOICES]
    if unknown:
        raise KdpipeError(f"unknown --quantize {', '.join(unknown)}; "
                          f"choose from {', '.join(QUANTIZE_CHOICES)}")
    return values


def _names(values: list[str] | str, flag: str) -> list[str]:
    """A list of names (a comma-separated string from the Python API is split the same way)."""
    return comma_list(values, str, flag)


SUPPORT_HEADER = ["target", "file", "none", "fp16", "int8", "needs"]


def support_rows() -> list[list[str]]:
    """Which target supports which --quantize value, and what it needs (`kdpipe[extra]`, to pip
    install, or `(core)`): one row per target, in the columns of `SUPPORT_HEADER`."""
    from kdpipe.export.base import QUANTIZE_CHOICES
    from kdpipe.export.targets import TARGETS

    rows = []
    for name in TARGETS.names():
        target = TARGETS.get(name)
        cells = [target.quantizations.get(q, "-") for q in QUANTIZE_CHOICES]
        needs = f"kdpipe[{target.extra}]" if target.extra else "(core)"
        rows.append([name, target.suffix, *cells, needs])
    return rows


def support_table() -> str:
    """`support_rows` as a Markdown table, extras as the `pip install` line they need."""
    lines = ["| " + " | ".join(SUPPORT_HEADER) + " |", "|" + "---|" * len(SUPPORT_HEADER)]
    for *cells, needs in support_rows():
        needs = f"pip install '{needs}'" if needs.startswith("kdpipe[") else needs
        lines.append("| " + " | ".join([*cells, needs]) + " |")
    return "\n".join(lines)
