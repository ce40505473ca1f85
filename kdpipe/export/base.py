"""What every export target shares: the registry, the `Target` interface, the folded normalization.

A target is one module with one `@register_target` class. It names its file suffix, the
quantizations it supports (and why not the others), its optional package, the runtime (a key of
`kdpipe.runtime.RUNTIMES`) that the parity check runs it in, the same class `kdpipe bench` times,
and implements `export(...)`, which writes the artifact(s). Heavy or optional libraries
(onnxruntime, coremltools, executorch) are imported inside those methods, never at module level,
so `import kdpipe.export` works without them.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from kdpipe.export.metadata import ArtifactMetadata
from kdpipe.registry import Registry

# What `--quantize` accepts, and the artifact precision each one produces (metadata.quantization).
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "fp16", "int8")
PRECISION = {"none": "fp32", "fp16": "fp16", "int8": "int8"}

OutputKind = Literal["logits", "probabilities"]


class Normalized(nn.Module):
    """`model((x - mean) / std)`: the exported input is float RGB in [0, 1], NCHW.

    Folding the normalization into the graph means an app feeds pixels / 255 and needs no
    mean/std. The arithmetic and its order match `kdpipe.data.normalize`, so the wrapped model
    gives the checkpoint's own outputs.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", _channels(mean))
        self.register_buffer("std", _channels(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)


@dataclass
class Calibration:
    """INT8 calibration images: float32 [N, C, H, W] in [0, 1] (the folded model's own input)."""

    images: np.ndarray
    data: str  # where they came from, for the metadata
    seed: int = 0

    def batches(self, size: int) -> list[np.ndarray]:
        return [self.images[i:i + size] for i in range(0, len(self.images), size)]

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "split": "train", "n": len(self.images), "seed": self.seed}


@dataclass
class Exported:
    """One file a target wrote, with what its metadata needs that only the target knows."""

    path: Path
    batch_sizes: list[int] | None  # None: dynamic batch dimension
    input_name: str
    output_name: str
    max_batch_size: int | None = None
    input_dtype: str = "float32"  # "int8": a fully quantized file (its scale in `details`)
    output_kind: OutputKind = "logits"
    label_output_name: str | None = None
    quantization_detail: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def package_available(name: str) -> bool:
    """Whether `name` can be imported, without importing it (tests monkeypatch this)."""
    return importlib.util.find_spec(name) is not None


class Target(abc.ABC):
    """An export format. Subclasses set the class attributes and implement `export`/`runner`."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # ".onnx", ".mlpackage", ...
    runtime: ClassVar[str]  # the key in `kdpipe.runtime.RUNTIMES` of what runs (and checks) it
    unchecked_note: ClassVar[str] = ""  # what was checked instead where its runtime cannot run
    quantizations: ClassVar[dict[str, str]]  # supported --quantize value -> how, for the table
    unsupported: ClassVar[dict[str, str]] = {}  # refused --quantize value -> why
    default_quantize: ClassVar[str] = "none"
    learns_int8: ClassVar[bool] = False  # its int8 export uses a QAT checkpoint's learned ranges
    package: ClassVar[str | None] = None  # optional dependency (import name), None for core
    extra: ClassVar[str | None] = None  # the pip extra that installs it
    libraries: ClassVar[tuple[str, ...]] = ()  # distributions whose versions the metadata records

    def available(self) -> tuple[bool, str]:
        """(True, "") when the optional dependency is importable, else (False, how to install)."""
        if self.package is None or package_available(self.package):
            return True, ""
        return False, (f"the {self.name} target needs the {self.package} package: "
                       f"pip install 'kdpipe[{self.extra}]'")

    def refusal(self, quantize: str) -> str | None:
        """Why `quantize` cannot be exported to this target, or None when it can."""
        if quantize in self.quantizations:
            return None
        why = self.unsupported.get(quantize, "not implemented")
        return (f"{self.name} does not support --quantize {quantize} ({why}); "
                f"it supports: {', '.join(self.quantizations)}")

    def needs_calibration(self, quantize: str) -> bool:
        """Whether this export reads calibration images (static int8 activation ranges)."""
        return False

    @abc.abstractmethod
    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """Write `path` (and, where one file per batch size is needed, its `batch_variant`s).

        `model` is the eval-mode `Normalized` model; `meta` is the metadata without file facts,
        to embed; `batch_sizes` are the sizes the artifact(s) must run.
        """

    def simulation_source(self, exported: Exported) -> Path | None:
        """A staged file whose quantization the runtime simulates in float for the parity check,
        where it is not the artifact itself (an `.ort` file's ONNX source)."""
        return None

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        """The metadata stored inside the artifact, or None where the format has no place."""
        return None


TARGETS: Registry[Target] = Registry("export target")


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: register one instance of the target under `cls.name`."""
    TARGETS.register(cls.name)(cls())
    return cls


def batch_variant(path: Path, batch_size: int) -> Path:
    """`resnet20.int8.pte` -> `resnet20.int8.b32.pte`: the file for one fixed batch size."""
    suffix = "".join(path.suffixes[-1:])
    return path.with_name(f"{path.name[: -len(suffix)]}.b{batch_size}{suffix}")


def with_io(meta: ArtifactMetadata, exported: Exported) -> ArtifactMetadata:
    """`meta` completed with one exported file's input/output and batch facts."""
    fixed = exported.batch_sizes
    batch: list[int | str] = ["batch"] if fixed is None else [fixed[0]]
    return replace(
        meta,
        input_name=exported.input_name,
        output_name=exported.output_name,
        input_dtype=exported.input_dtype,
        output_kind=exported.output_kind,
        label_output_name=exported.label_output_name,
        dynamic_batch=exported.batch_sizes is None,
        batch_sizes=exported.batch_sizes,
        max_batch_size=exported.max_batch_size,
        input_shape_batched=batch + list(meta.input_shape),
        quantization_detail=exported.quantization_detail or meta.quantization_detail,
        details={**meta.details, **exported.details},
        notes=meta.notes + exported.notes,
    )


def example_input(meta: ArtifactMetadata, batch_size: int) -> torch.Tensor:
    """A random [batch, C, H, W] tensor in [0, 1] for tracing and exporting."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((batch_size, *meta.input_shape), generator=generator)
