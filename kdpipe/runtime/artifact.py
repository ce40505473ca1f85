"""What bench and deploy know about one file: its format, labels, preprocessing, batch sizes, size.

Exported artifacts describe themselves through export's metadata (`kdpipe.export.metadata`: the
JSON sidecar `<artifact>.json`, or the copy embedded in a TorchScript archive); checkpoints and
pytorch_resnet_cifar10 files through `kdpipe.models`. Both end up as one `Artifact` record, so a
runtime never pokes at either source. Nothing heavy is imported at module level: the memory-
measuring subprocess imports this module and must not pay for PyTorch unless its runtime needs it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.export.metadata import (
    TORCHSCRIPT_EXTRA,
    ArtifactMetadata,
    path_size,
    read_metadata,
    sidecar_path,
)

CHECKPOINT = "checkpoint"
# Suffix -> format for files whose metadata does not say (a `.pt` may also be TorchScript: sniffed).
SUFFIX_FORMATS = {
    ".onnx": "onnx",
    ".ort": "ort",
    ".pte": "executorch",
    ".mlpackage": "coreml",
    ".mlmodel": "coreml",
    ".tflite": "litert",
    ".xml": "openvino",
    ".param": "ncnn",
    ".pt": CHECKPOINT,
    ".pth": CHECKPOINT,
    ".th": CHECKPOINT,
    ".ckpt": CHECKPOINT,
}


@dataclass(frozen=True)
class Artifact:
    """One benchmarkable file and what it needs: every runtime loads from this record.

    `mean`/`std` are set only when the file expects normalized input (a checkpoint): a runtime then
    normalizes inside its session, so every runtime takes float RGB in [0, 1], NCHW.
    `batch_sizes` is None for a dynamic batch dimension, else the only sizes the file runs;
    `max_batch_size` bounds a dynamic dimension where the format needs a bound (ExecuTorch).
    """

    path: Path
    format: str
    quantization: str = "fp32"
    classes: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = (3, 32, 32)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    max_batch_size: int | None = None
    params: int | None = None
    macs: int | None = None
    model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """The name in reports: runs keep one generic file name (model.pt) per folder, so the
        folder tells them apart."""
        folder = self.path.parent.name
        return f"{folder}/{self.path.name}" if folder else self.path.name

    @property
    def size_bytes(self) -> int:
        return path_size(self.path)

    def runs_batch(self, batch_size: int) -> bool:
        """Whether the file accepts a batch of this size."""
        if self.batch_sizes is not None:
            return batch_size in self.batch_sizes
        return self.max_batch_size is None or batch_size <= self.max_batch_size

    def to_json(self) -> dict[str, Any]:
        """Plain values (for the memory subprocess and the deploy bundle)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Artifact:
        tuples = ("classes", "input_shape", "mean", "std", "batch_sizes")
        fixed = {k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()}
        return cls(**{**fixed, "path": Path(values["path"])})


def open_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Describe `path`, or raise a `KdpipeError` saying why it cannot be benchmarked."""
    path = Path(path)
    if not path.exists():
        raise KdpipeError(f"not found: {path} (check the path; cwd is {Path.cwd()})")
    metadata = read_export_metadata(path)
    if metadata is not None:
        return from_export_metadata(path, metadata)
    fmt = guess_format(path)
    if fmt == CHECKPOINT:
        return from_checkpoint(path)
    raise KdpipeError(
        f"{path} has no metadata: expected the sidecar {sidecar_path(path)} that `kdpipe export` "
        "writes next to every artifact (it names the classes and the input the model expects); "
        "re-export the model or copy the sidecar along with it"
    )


def guess_format(path: Path) -> str:
    """The format by suffix, telling TorchScript archives from checkpoints by their contents."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        raise KdpipeError(f"{path}: unknown kind of file {path.suffix or '(no suffix)'!r}; "
                          f"kdpipe benchmarks {known} files")
    if fmt == CHECKPOINT and is_torchscript(path):
        return "torchscript"
    return fmt


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold `constants.pkl` and compiled `code/`; `torch.save` files do not."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") for n in archive.namelist())


def read_export_metadata(path: Path) -> dict[str, Any] | None:
    """Export's metadata of `path` as a dict: the sidecar, else the copy embedded in a
    TorchScript archive; None when the file has neither (a checkpoint, or a foreign file)."""
    if sidecar_path(path).is_file():
        return read_metadata(path).to_dict()
    if path.suffix.lower() == ".pt" and is_torchscript(path):
        embedded = _embedded_torchscript_metadata(path)
        if embedded is not None:
            where = f"{path}:{TORCHSCRIPT_EXTRA}"
            return ArtifactMetadata.from_dict(embedded, where=where).to_dict()
    return None


def _embedded_torchscript_metadata(path: Path) -> dict[str, Any] | None:
    """The `kdpipe.json` that export embeds in TorchScript archives (`<archive>/extra/...`),
    read with zipfile so that describing a file needs no PyTorch."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("/extra/" + TORCHSCRIPT_EXTRA):
                try:
                    return json.loads(archive.read(name))
                except ValueError:
                    raise KdpipeError(f"{path}: its embedded metadata is not JSON; "
                                      "re-export the artifact") from None
    return None


def from_export_metadata(path: Path, meta: dict[str, Any]) -> Artifact:
    """An `Artifact` from export's metadata (`ArtifactMetadata.to_dict()`, schema_version 1)."""
    folded = meta["normalization_folded"]
    return Artifact(
        path=path,
        format=meta["format"],
        quantization=meta["quantization"],
        classes=tuple(meta["classes"]),
        input_shape=tuple(meta["input_shape"]),
        mean=None if folded else tuple(meta["mean"]),
        std=None if folded else tuple(meta["std"]),
        batch_sizes=tuple(meta["batch_sizes"]) if meta["batch_sizes"] else None,
        max_batch_size=meta["max_batch_size"],
        params=meta["params"],
        macs=meta["macs"],
        model=meta["model"],
        metadata=meta,
    )


def from_checkpoint(path: Path) -> Artifact:
    """An `Artifact` for a kdpipe checkpoint or a pytorch_resnet_cifar10 file (PyTorch eager)."""
    from kdpipe.models import checkpoint_meta, count_macs, count_params, load_checkpoint

    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    return Artifact(
        path=path,
        format=CHECKPOINT,
        quantization="fp32",
        classes=tuple(meta.classes),
        input_shape=tuple(meta.input_shape),
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        params=count_params(model),
        macs=count_macs(model, (1, *meta.input_shape)),
        model=meta.model,
        metadata={"format": CHECKPOINT, "model": meta.model, "classes": list(meta.classes),
                  "mean": list(meta.mean), "std": list(meta.std),
                  "input_shape": list(meta.input_shape), "normalization_folded": False,
                  "source_sha256": meta.source_sha256},
    )
