"""ncnn: `resnet20.ncnn.param` (the graph, text) with its weights in `resnet20.ncnn.bin` beside it.

The model is traced with TorchScript and converted by pnnx (PyTorch -> pnnx -> ncnn, the
converter ncnn's authors maintain), whose binary ships in the `pnnx` wheel. ncnn layers take one
CHW image, so the file has no batch dimension: the runtime runs a batch image by image. The
`.bin` is a companion file (`kdpipe.export.metadata.COMPANION_SUFFIXES`). fp16 stores the weights
as float16 (pnnx's default, `fp16=1`); int8 needs ncnn's `ncnn2table`/`ncnn2int8` tools, which
the PyPI wheels do not ship, so it is refused up front.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.export import base
from kdpipe.export.base import Calibration, Exported, Target, example_input, register_target
from kdpipe.export.metadata import ArtifactMetadata, companion_files

PACKAGES = ("pnnx", "ncnn")  # the converter, and the runtime the parity check needs
INPUT_NAME, OUTPUT_NAME = "in0", "out0"  # the blob names pnnx gives
CONVERT_TIMEOUT_S = 600
FP16_DETAIL = "float16 weights (pnnx fp16=1), float32 input and output"


@register_target
class NcnnTarget(Target):
    name = "ncnn"
    suffix = ".ncnn.param"
    runtime = "ncnn"
    quantizations = {"none": "fp32", "fp16": "fp16 weights, fp32 I/O"}
    unsupported = {"int8": "ncnn's int8 calibration tools ncnn2table and ncnn2int8 are not in "
                           "the ncnn/pnnx wheels; build ncnn from source for them, or use litert, "
                           "openvino or onnx for int8"}
    package = "pnnx"
    extra = "ncnn"
    libraries = PACKAGES

    def available(self) -> tuple[bool, str]:
        missing = [name for name in PACKAGES if not base.package_available(name)]
        if not missing:
            return True, ""
        return False, (f"the ncnn target needs the {' and '.join(missing)} "
                       f"package{'s' if len(missing) > 1 else ''}: pip install 'kdpipe[ncnn]'")

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One `.ncnn.param` + `.ncnn.bin` pair that runs any batch, one image per call."""
        (weights,) = companion_files(path)
        with tempfile.TemporaryDirectory(prefix="pnnx-", dir=path.parent) as scratch:
            traced = Path(scratch) / "model.pt"
            with _shortcut_as_pooling(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings
                torch.jit.trace(model, example_input(meta, 1)).save(str(traced))
            _pnnx(traced, meta, path, weights, fp16=quantize == "fp16")
        return [Exported(
            path=path, batch_sizes=None, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
            quantization_detail=FP16_DETAIL if quantize == "fp16" else "",
            details={"converter": "pnnx (TorchScript trace)", "weights_file": weights.name,
                     "input_blob": INPUT_NAME, "output_blob": OUTPUT_NAME,
                     "per_call": "one CHW image (ncnn.Mat); batches run image by image"},
            notes=[f"the weights are in {weights.name}: ship it beside {path.name}",
                   "ncnn takes one image per call: a batch is that many calls"],
        )]


def _pnnx(traced: Path, meta: ArtifactMetadata, param: Path, weights: Path, fp16: bool) -> None:
    """Run the pnnx binary on the traced model; its side files stay in the scratch folder."""
    import pnnx

    shape = ",".join(map(str, [1, *meta.input_shape]))
    # Absolute paths: the binary runs in the scratch folder, where it writes its side files.
    traced, param, weights = traced.resolve(), param.resolve(), weights.resolve()
    argv = [pnnx.EXEC_PATH, str(traced), f"inputshape=[{shape}]f32", "device=cpu", "optlevel=2",
            f"ncnnparam={param}", f"ncnnbin={weights}", f"fp16={int(fp16)}"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=traced.parent,
                          timeout=CONVERT_TIMEOUT_S)
    if done.returncode != 0 or not (param.is_file() and weights.is_file()):
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"pnnx failed (exit status {done.returncode}): {tail}")


def _pooled_shortcut(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ShortcutA.forward with the subsampling as a 1x1 max-pool: the same elements exactly
    (a window of one), and an operator ncnn has (`Pooling`)."""
    x = F.max_pool2d(x, kernel_size=1, stride=self.stride)
    return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


@contextlib.contextmanager
def _shortcut_as_pooling() -> Iterator[None]:
    """Trace ResNet's option-A shortcut in a form ncnn can load.

    pnnx turns its strided slice `x[:, :, ::2, ::2]` into a `Tensor.slice` layer that ncnn does not
    have (the file would not load); the 1x1 max-pool with the same stride is bit-identical. The
    class is patched only while tracing.
    """
    from kdpipe.models.resnet_cifar import ShortcutA

    original = ShortcutA.forward
    ShortcutA.forward = _pooled_shortcut
    try:
        yield
    finally:
        ShortcutA.forward = original
