"""The artifact metadata schema, version 1: what bench, deploy and an app need to use an export.

Every artifact `X` that `kdpipe export` writes gets a JSON sidecar `X.json` holding one
`ArtifactMetadata` (below). Formats with a place for metadata carry a copy inside too: ONNX
`metadata_props["kdpipe"]`, Core ML `user_defined_metadata["kdpipe"]`, TorchScript
`_extra_files["kdpipe.json"]` (the archive's `extra/kdpipe.json`), OpenVINO IR
`rt_info["kdpipe"]`. ExecuTorch `.pte`, LiteRT `.tflite` and ncnn `.param` files have no such
place: their sidecar is the only copy.

The embedded copy is written together with the model, before the file exists and before the
parity check runs, so it leaves out what only the finished file knows: `file`, `size_bytes`,
`sha256` are empty and `parity` is absent. The sidecar is the complete record.

This module imports only the standard library and `kdpipe.errors`, so a reader (the bench
stage's memory-measuring subprocess, an app's build script) pays for neither PyTorch nor kdpipe's
models. Fields are added only together with a new `schema_version`; a reader accepts every
version up to its own (fields an older file lacks take their defaults).

Version 2 added `preprocessing`, and the parity report's `kernel_agreement`,
`kernel_max_abs_diff`, `min_agreement` and `machine`; the embedded copy holds file names, never
the exporting machine's paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.hashing import file_sha256, path_sha256

SCHEMA_VERSION = 2
KIND = "kdpipe.artifact"
EMBEDDED_KEY = "kdpipe"  # ONNX metadata_props / Core ML user_defined_metadata key
TORCHSCRIPT_EXTRA = "kdpipe.json"  # TorchScript _extra_files entry
# Two-file formats: the artifact is the graph and its weights lie beside it under the same stem
# (`resnet20.xml` + `resnet20.bin`), the rule OpenVINO's `read_model` itself follows. Sizes,
# hashes, publishing, bundles and uploads take these companions along.
COMPANION_SUFFIXES: dict[str, tuple[str, ...]] = {
    ".xml": (".bin",),  # OpenVINO IR
    ".param": (".bin",),  # ncnn
}


@dataclass
class ParityReport:
    """How closely the artifact, run in its own runtime, matches the PyTorch model.

    - `checked`: whether the artifact was run at all; when false, `reason` says why (e.g.
      "Core ML prediction needs macOS") and the numbers are None.
    - `n`: test images compared (stratified from the data set's test split).
    - `data`: where those images came from.
    - `compared`: `logits`, or `log_probabilities` for an artifact whose output is probabilities
      (a Core ML classifier); the PyTorch side is put through the same function.
    - `max_abs_logit_diff`: max over images and classes of |artifact - PyTorch|.
    - `top1_agreement`: percent of images whose top-1 class is the same in both.
    - `pytorch_top1`, `artifact_top1`: top-1 accuracy in percent of each on those images.
    - `batch_sizes_run`: the batch sizes the artifact was called with during the check.
    - `rule`: the criterion applied: FP32 artifacts agree on >= 99.9% of top-1s; quantized ones
      (fp16, int8) lose at most 1 point of top-1 accuracy, and INT8 ones also agree with PyTorch
      on at least `min_agreement` percent of top-1s.
    - `kernel_agreement`, `kernel_max_abs_diff`: where the runtime can also run the file with its
      graph optimizations off (ONNX Runtime: QDQ nodes then compute in float, the quantization
      simulated exactly), the top-1 agreement and max |diff| of the optimized, integer-kernel
      session with that simulation. A low value means the CPU's int8 kernels are not computing
      what the file says (saturation); None where not measured.
    - `machine`: where the check ran: `cpu` (model name), `arch`, `isa` (the flags that decide
      int8/bf16 arithmetic: avx2, avx512_vnni, amx_int8, asimddp, ...), `runtime` and
      `runtime_version`. An INT8 result holds for CPUs of the same kind.
    - `passed`: the rule held (None when not checked).
    - `reason`: why it failed or was not checked; empty otherwise.
    """

    checked: bool
    n: int = 0
    data: str = ""
    compared: str = "logits"
    max_abs_logit_diff: float | None = None
    top1_agreement: float | None = None
    pytorch_top1: float | None = None
    artifact_top1: float | None = None
    batch_sizes_run: list[int] = field(default_factory=list)
    rule: str = ""
    min_agreement: float | None = None
    kernel_agreement: float | None = None
    kernel_max_abs_diff: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    reason: str = ""

    @classmethod
    def not_checked(cls, reason: str) -> ParityReport:
        return cls(checked=False, reason=reason)


@dataclass
class ArtifactMetadata:
    """One exported model file (or `.mlpackage` folder), described for whoever runs it.

    Identity
    - `schema_version` (1), `kind` ("kdpipe.artifact").
    - `format`: the export target: `onnx`, `ort`, `torchscript`, `coreml`, `executorch`,
      `litert`, `openvino` or `ncnn`.
    - `runtime`: what runs it: `onnxruntime`, `torch.jit`, `coreml`, `executorch+xnnpack`,
      `litert`, `openvino`, `ncnn`.
    - `quantization`: the artifact's numbers: `fp32`, `fp16` or `int8`;
      `quantization_detail` says how (e.g. static QDQ, per-channel weights, calibration).
    - `file`: the artifact's file name; `size_bytes`: bytes on disk (a folder's total, or the
      file's with its companion files: an OpenVINO `.xml` or ncnn `.param` keeps its weights in
      the `.bin` of the same stem, which must travel with it); `sha256`: `artifact_sha256` of it
      (for a folder or a file with companions, over all their files: see that function).

    Input (normalization is folded into the model: feed RGB floats in [0, 1], no mean/std)
    - `input_name`: the input's name where the format names inputs (ONNX, Core ML); TorchScript
      and ExecuTorch take it positionally. `input_dtype` ("float32"), `input_layout` ("NCHW"),
      `color_order` ("RGB"), `input_range` ([0.0, 1.0]). A LiteRT int8 file is the exception:
      its input tensor is "int8", and `details["input_quantization"]` ({"dtype", "scale",
      "zero_point"}) says how to quantize those [0, 1] floats, `round(x / scale) + zero_point`;
      `details["output_quantization"]` dequantizes its int8 logits the same way.
    - `input_shape`: one image, [C, H, W], e.g. [3, 32, 32].
    - `input_shape_batched`: the model's input with its batch dimension: ["batch", 3, 32, 32]
      when the batch is dynamic, else e.g. [32, 3, 32, 32].
    - `dynamic_batch`: whether the batch dimension is dynamic; `batch_sizes`: None when it is,
      else the only batch sizes the file runs (one); `max_batch_size`: the largest batch a dynamic
      dimension accepts where the format needs a bound (ExecuTorch), else None.
    - `normalization_folded` (true): the model computes `(x - mean) / std` itself; `mean`,
      `std` are recorded for information only.
    - `preprocessing`: how the reference numbers fed the model, for an app that must reproduce
      them exactly: `decoder` (e.g. "PIL 11.3.0 (libjpeg-turbo 3.1)"), `resize` (filter and
      when it applies), `color`, `scale`. Another JPEG decoder changes a few percent of
      predictions.

    Output
    - `output_name`; `output_kind`: `logits` or `probabilities` (a Core ML classifier, whose
      probabilities are a dict keyed by class name); `label_output_name`: the output holding the
      predicted class name where the format has one (Core ML `classLabel`), else None.
    - `classes`: class names in output order; `num_classes`.

    Source
    - `model`, `model_kwargs`: the registry name and arguments; `params`: parameter count;
      `macs`: multiply-accumulates per image.
    - `source_checkpoint`: the checkpoint path as given (the embedded copy: its file name
      only); `source_sha256`: its sha256; `source_format`: `kdpipe` or `pytorch_resnet_cifar10`.
    - `calibration`: for calibrated int8, {"data", "split", "n", "seed"} (the embedded copy:
      the data set's file name only); else None. An int8 export of a checkpoint trained with
      `kdpipe distill --qat` that used its learned activation ranges adds `method`
      ("learned (QAT)"), `learned_activations` (how many the checkpoint holds) and `scheme` (what
      training simulated); the images then calibrate only the tensors training did not quantize,
      which `details.learned_quantization.calibrated` lists.

    Checks and provenance
    - `parity`: a `ParityReport` (None only in the embedded copy).
    - `details`: target-specific facts (ONNX opset, Core ML spec summary and deployment target,
      ExecuTorch delegate, ...). `notes`: sentences a user should read (what was not possible).
    - `versions`: the exporting libraries' versions; `kdpipe_version`; `created`: ISO 8601 UTC.
    """

    format: str
    runtime: str
    quantization: str
    classes: list[str]
    input_name: str
    output_name: str
    input_shape: list[int]
    input_shape_batched: list[int | str]
    model: str
    schema_version: int = SCHEMA_VERSION
    kind: str = KIND
    quantization_detail: str = ""
    file: str = ""
    size_bytes: int = 0
    sha256: str = ""
    num_classes: int = 0
    input_dtype: str = "float32"
    input_layout: str = "NCHW"
    color_order: str = "RGB"
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    dynamic_batch: bool = False
    batch_sizes: list[int] | None = None
    max_batch_size: int | None = None
    normalization_folded: bool = True
    preprocessing: dict[str, str] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    output_kind: str = "logits"
    label_output_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    source_checkpoint: str = ""
    source_sha256: str = ""
    source_format: str = ""
    calibration: dict[str, Any] | None = None
    parity: ParityReport | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    kdpipe_version: str = ""
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def embedded_json(self) -> str:
        """The copy stored inside the artifact: no file facts, no parity (see the module doc),
        and file names instead of paths, so a shipped file says nothing of the machine that made
        it (the sha256 fields identify the sources)."""
        calibration = self.calibration and {**self.calibration,
                                            "data": _file_name(self.calibration["data"])}
        inner = dataclasses.replace(self, file="", size_bytes=0, sha256="", parity=None,
                                    source_checkpoint=_file_name(self.source_checkpoint),
                                    calibration=calibration)
        return json.dumps(inner.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "metadata") -> ArtifactMetadata:
        """Build from plain values, refusing other schema versions and missing fields."""
        version = values.get("schema_version")
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise KdpipeError(
                f"{where} has schema_version {version!r}; this kdpipe reads versions 1 to "
                f"{SCHEMA_VERSION}: re-export the artifact with this kdpipe (or upgrade kdpipe)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if isinstance(kwargs.get("parity"), dict):
            kwargs["parity"] = ParityReport(**kwargs["parity"])
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise KdpipeError(f"{where} is incomplete ({e}); re-export the artifact") from None


def _file_name(where: str) -> str:
    """`where` with every path in it cut to its file name ("tarball /data/c.tar.gz train split"
    -> "tarball c.tar.gz train split"): words holding a path separator are paths."""
    return " ".join(PureWindowsPath(word).name if ("/" in word or "\\" in word) else word
                    for word in where.split(" "))


def sidecar_path(artifact: str | Path) -> Path:
    """Where an artifact's metadata lives: `<artifact>.json` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_metadata(artifact: str | Path) -> ArtifactMetadata:
    """The metadata of an exported artifact, from its JSON sidecar (no kdpipe model import)."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise KdpipeError(
            f"no metadata for {artifact}: expected {path}, which `kdpipe export` writes beside "
            "every artifact; copy it along with the artifact or re-export"
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KdpipeError(f"cannot read {path}: {e}; re-export the artifact") from None
    if not isinstance(values, dict):
        raise KdpipeError(f"{path} is not a JSON object; re-export the artifact")
    return ArtifactMetadata.from_dict(values, where=str(path))


def companion_files(artifact: str | Path) -> list[Path]:
    """The files that travel with an artifact: the weights of a two-file format, beside it under
    the same stem (`COMPANION_SUFFIXES`); none for every other format."""
    artifact = Path(artifact)
    return [artifact.with_suffix(s) for s in COMPANION_SUFFIXES.get(artifact.suffix.lower(), ())]


def path_size(path: Path) -> int:
    """Bytes of a file with its companion files, or of all files under a folder (a Core ML
    `.mlpackage`)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in [path, *companion_files(path)] if p.exists())


def artifact_sha256(path: str | Path) -> str:
    """Hex sha256 of a file; of a folder (`.mlpackage`), of its files' paths and sha256s in
    order (`kdpipe.hashing.path_sha256`). Of a file with companion files (OpenVINO `.xml` +
    `.bin`): the sha256 of the lines `file-name \\0 file-sha256 \\n` of the file, then of its
    companions, so one fingerprint changes when either does."""
    path = Path(path)
    companions = [p for p in companion_files(path) if p.exists()]
    if path.is_dir() or not companions:
        return path_sha256(path)
    lines = [f"{p.name}\0{file_sha256(p)}\n" for p in [path, *companions]]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
