"""TensorRT on an NVIDIA GPU: ONNX files through ONNX Runtime's TensorRT execution provider,
checkpoints through torch-tensorrt. FP32 by default, FP16 as `tensorrt-fp16`, INT8 for
QDQ-quantized ONNX files (TensorRT's explicit quantization).

Sessions take numpy on the host like every runtime, so the host-device copies are part of each
timed call (as in an app); `sync()` makes the timer wait for the GPU.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from kdpipe.errors import KdpipeError
from kdpipe.runtime.artifact import CHECKPOINT, Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session
from kdpipe.runtime.onnxruntime import OrtSession, session_options

NEEDS = "TensorRT needs an NVIDIA GPU with CUDA and `pip install 'kdpipe[tensorrt]'`"
TRT_EP = "TensorrtExecutionProvider"
# Optimisation profile of dynamic-batch engines: TensorRT builds kernels for this range.
PROFILE_MAX_BATCH = 256
PROFILE_OPT_BATCH = 32


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def ort_has_tensorrt() -> bool:
    """The installed ONNX Runtime is a GPU build with the TensorRT EP (onnxruntime-gpu)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime as ort

    return TRT_EP in ort.get_available_providers()


def has_torch_tensorrt() -> bool:
    return importlib.util.find_spec("torch_tensorrt") is not None


class CudaTorchSession:
    """A compiled torch-tensorrt module: host numpy in, host numpy out."""

    def __init__(self, module) -> None:
        self.module = module

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x).cuda()).float().cpu().numpy()

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()


@RUNTIMES.register("tensorrt")
class TensorRT(Runtime):
    name = "tensorrt"
    formats = ("onnx", CHECKPOINT)
    package = "tensorrt"
    install_hint = NEEDS
    precision = "fp32"  # float precision; an INT8 (QDQ) ONNX file runs in INT8 whatever this is

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("torch") is None or not cuda_available():
            return False, f"{NEEDS} (no CUDA device here)"
        if not (ort_has_tensorrt() or has_torch_tensorrt()):
            return False, f"{NEEDS} (neither torch-tensorrt nor onnxruntime-gpu with TensorRT)"
        return True, ""

    def available_for(self, artifact: Artifact) -> tuple[bool, str]:
        ok, reason = self.available()
        if not ok:
            return ok, reason
        if artifact.format == "onnx" and not ort_has_tensorrt():
            return False, f"{NEEDS}: ONNX files need onnxruntime-gpu with the TensorRT EP"
        if artifact.format == CHECKPOINT and not has_torch_tensorrt():
            return False, f"{NEEDS}: checkpoints need torch-tensorrt"
        return True, ""

    def version(self) -> str | None:
        for package in ("tensorrt", "torch-tensorrt", "tensorrt-cu12"):
            found = _version(package)
            if found:
                return found
        return None

    def load(self, artifact: Artifact, threads: int) -> Session:
        loaders = {"onnx": self._load_onnx, CHECKPOINT: self._load_checkpoint}
        return loaders[artifact.format](artifact, threads)

    def _load_onnx(self, artifact: Artifact, threads: int) -> Session:
        import onnx
        import onnxruntime as ort

        name = onnx.load(str(artifact.path), load_external_data=False).graph.input[0].name
        shape = "x".join(str(d) for d in artifact.input_shape)
        low, opt, high = _profile(artifact)
        options = {
            "trt_fp16_enable": self.precision == "fp16",
            "trt_int8_enable": artifact.quantization == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(Path(tempfile.gettempdir()) / "kdpipe-trt-cache"),
            "trt_profile_min_shapes": f"{name}:{low}x{shape}",
            "trt_profile_opt_shapes": f"{name}:{opt}x{shape}",
            "trt_profile_max_shapes": f"{name}:{high}x{shape}",
        }
        session = ort.InferenceSession(str(artifact.path), sess_options=session_options(threads),
                                       providers=[(TRT_EP, options), "CUDAExecutionProvider"])
        # ONNX Runtime falls back to other providers silently; a bench must not mislabel them.
        if session.get_providers()[0] != TRT_EP:
            raise KdpipeError(f"ONNX Runtime did not enable TensorRT for {artifact.name} "
                              f"(providers: {session.get_providers()})")
        return OrtSession(session)

    def _load_checkpoint(self, artifact: Artifact, threads: int) -> Session:
        import torch
        import torch_tensorrt
        from torchvision.transforms import Normalize

        from kdpipe.models import load_checkpoint

        torch.set_num_threads(threads)
        # Normalization inside the engine, so the session takes [0, 1] like every runtime.
        model = torch.nn.Sequential(Normalize(artifact.mean, artifact.std),
                                    load_checkpoint(artifact.path)).eval().cuda()
        low, opt, high = _profile(artifact)
        shape = tuple(artifact.input_shape)
        spec = torch_tensorrt.Input(min_shape=(low, *shape), opt_shape=(opt, *shape),
                                    max_shape=(high, *shape), dtype=torch.float32)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        compiled = torch_tensorrt.compile(model, ir="dynamo", inputs=[spec],
                                          enabled_precisions={dtype})
        return CudaTorchSession(compiled)


@RUNTIMES.register("tensorrt-fp16")
class TensorRTFp16(TensorRT):
    name = "tensorrt-fp16"
    precision = "fp16"
    auto = False  # a precision choice: benched when named with --runtimes


def _profile(artifact: Artifact) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine: the artifact's own sizes when it has fixed ones."""
    if artifact.batch_sizes:
        return min(artifact.batch_sizes), max(artifact.batch_sizes), max(artifact.batch_sizes)
    high = min(PROFILE_MAX_BATCH, artifact.max_batch_size or PROFILE_MAX_BATCH)
    return 1, min(PROFILE_OPT_BATCH, high), high


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return None
