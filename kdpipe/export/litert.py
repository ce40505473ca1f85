"""LiteRT (TensorFlow Lite): one `.tflite` flat buffer per batch size, run by LiteRT's Interpreter.

Converted by `litert_torch.convert` (torch.export -> MLIR -> TFLite flat buffer), which keeps the
PyTorch layout: the input is NCHW in [0, 1] with the normalization folded in, like every kdpipe
artifact (float32, except in int8 files: below). Its input shape is static (litert-torch 0.10
fails to convert this graph with a dynamic batch dimension), so each requested batch size gets its
own file (`batch_variant`).

- fp16: ai-edge-quantizer's weight-only FLOAT_CASTING: float16 weights, dequantized by the
  runtime (XNNPACK keeps them fp16 where the CPU computes in fp16); float32 input and output.
- int8: ai-edge-quantizer's static recipe (`static_wi8_ai8`) on the FP32 flat buffer: int8
  symmetric per-channel weights and int8 activations whose ranges (the moving average of each
  call's min/max) are calibrated on training images, once for every batch size. The input
  and output tensors are int8 too, each with a scale and zero point (recorded in the sidecar's
  `details`): an app quantizes the [0, 1] floats, `q = round(x / scale) + zero_point` (the
  calibrated input scale is near 1/255 with zero point -128, so q is close to an 8-bit pixel
  minus 128); argmax needs no dequantization of the logits (`kdpipe.runtime.litert` does both
  conversions). The recipe has no float-input variant: leaving the first operator unquantized
  still gives an int8 graph input, followed by a DEQUANTIZE.

  Not litert-torch's own PT2E route (quantize in PyTorch, then lower with its `QuantConfig`):
  `benchmarks/litert_int8.py` measured its simulated graph at 98.1% top-1 agreement with FP32
  on the MobileNetV2 x0.5 student but its 0.10 lowering at 92.9%, under the 97% gate, while
  this recipe reaches 98.2% on the same images.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from kdpipe.export.base import (
    Calibration,
    Exported,
    Target,
    batch_variant,
    example_input,
    register_target,
)
from kdpipe.export.metadata import ArtifactMetadata
from kdpipe.runtime.base import default_threads

FP16_DETAIL = ("float16 weights (ai-edge-quantizer weight-only FLOAT_CASTING), float32 input "
               "and output")
INT8_DETAIL = ("static quantization (ai-edge-quantizer static_wi8_ai8, moving-average "
               "min/max): int8 symmetric per-channel weights, int8 activations calibrated on "
               "training images; int8 input and output with the scales and zero points in "
               "details")
DETAILS = {"none": "", "fp16": FP16_DETAIL, "int8": INT8_DETAIL}
SIGNATURE, INPUT_NAME, OUTPUT_NAME = "serving_default", "args_0", "output_0"  # litert-torch's
CALIBRATION_BATCH = 64


@register_target
class LiteRtTarget(Target):
    name = "litert"
    suffix = ".tflite"
    runtime = "litert"
    quantizations = {
        "none": "fp32, XNNPACK",
        "fp16": "fp16 weights, fp32 I/O",
        "int8": "static, per-channel, calibrated; int8 in and out",
    }
    package = "litert_torch"
    extra = "litert"
    libraries = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One static-shape file per batch size (int8: one set of ranges, calibrated once)."""
        with _quiet():
            ranges = _int8_ranges(model, meta, calibration) if quantize == "int8" else None
        results = []
        for b in sorted(set(batch_sizes)):
            exported = Exported(
                path=batch_variant(path, b), batch_sizes=[b], input_name=INPUT_NAME,
                output_name=OUTPUT_NAME, quantization_detail=DETAILS[quantize],
                details={"converter": "litert_torch.convert", "signature": SIGNATURE,
                         "delegate": "XNNPACK (the Interpreter's default)"},
                notes=[f"static input shape [{b}, {', '.join(map(str, meta.input_shape))}]: "
                       "never resize_tensor_input it (the batch is baked into its reshapes); "
                       "export the batch sizes you need"],
            )
            with _quiet():
                _convert(model, meta, quantize, ranges, b, exported.path)
            if quantize == "int8":
                _describe_int8_io(exported)
            results.append(exported)
        return results


def _convert(model: nn.Module, meta: ArtifactMetadata, quantize: str, ranges: dict | None,
             batch: int, path: Path) -> None:
    """Lower to a flat buffer with a static [batch, C, H, W] input and write it to `path`;
    fp16 and int8 rewrite that FP32 file with ai-edge-quantizer."""
    fp32 = path.with_name(path.name + ".fp32.tmp")
    _fp32_flatbuffer(model, meta, batch, path if quantize == "none" else fp32)
    if quantize == "none":
        return
    try:
        if quantize == "fp16":
            _fp16_weights(fp32, path)
        else:
            _static_int8(fp32, path, ranges)
    finally:
        fp32.unlink(missing_ok=True)


def _fp32_flatbuffer(model: nn.Module, meta: ArtifactMetadata, batch: int, path: Path) -> None:
    import litert_torch

    litert_torch.convert(model, (example_input(meta, batch),)).export(str(path))


def _fp16_weights(source: Path, dest: Path) -> None:
    """ai-edge-quantizer: every supported operator's weights cast to float16."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    quantizer = aeq.Quantizer(str(source))
    quantizer.add_weight_only_config(regex=".*",
                                     operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    quantizer.quantize().export_model(str(dest), overwrite=True)


def _int8_ranges(model: nn.Module, meta: ArtifactMetadata,
                 calibration: Calibration | None) -> dict:
    """Every tensor's range (ai-edge-quantizer's moving average of each call's min/max) over
    the calibration images, observed on one FP32 file of `CALIBRATION_BATCH` images per call.

    Calibrating each batch-1 file on single images let the moving average settle below the
    large logits (their max |diff| reached 16 on ResNet20); one set of ranges also makes every
    batch size's file compute the same numbers. The files share their tensor names, so the
    ranges apply to each.
    """
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer import recipe

    if calibration is None:
        raise ValueError("int8 LiteRT export needs calibration images")
    batch = min(CALIBRATION_BATCH, len(calibration.images))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "calibration.tflite"
        _fp32_flatbuffer(model, meta, batch, fp32)
        quantizer = aeq.Quantizer(str(fp32))
        quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
        samples = [{INPUT_NAME: x} for x in _full_batches(calibration.images, batch)]
        return quantizer.calibrate({SIGNATURE: samples}, num_threads=default_threads())


def _static_int8(source: Path, dest: Path, ranges: dict) -> None:
    """ai-edge-quantizer's `static_wi8_ai8` with the calibrated `ranges`."""
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer import recipe

    quantizer = aeq.Quantizer(str(source))
    quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
    quantizer.quantize(ranges, enable_progress_report=False).export_model(str(dest),
                                                                          overwrite=True)


def _full_batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """`images` cut into [batch, C, H, W] arrays, the only shape a static file accepts: a last
    partial batch is dropped, and a set smaller than one batch is repeated to fill it."""
    if len(images) < batch:
        images = np.resize(images, (batch, *images.shape[1:]))
    return [np.ascontiguousarray(images[i:i + batch])
            for i in range(0, len(images) - batch + 1, batch)]


def _describe_int8_io(exported: Exported) -> None:
    """Record the int8 file's input and output quantization, read back from the file itself."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(exported.path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    exported.input_dtype = np.dtype(inp["dtype"]).name
    for key, tensor in (("input_quantization", inp), ("output_quantization", out)):
        scale, zero_point = tensor["quantization"]
        exported.details[key] = {"dtype": np.dtype(tensor["dtype"]).name,
                                 "scale": float(scale), "zero_point": int(zero_point)}
    exported.notes.append(
        "int8 input: feed q = round(x / scale) + zero_point of the [0, 1] floats, clipped to "
        "[-128, 127], with details.input_quantization's scale and zero point; the int8 "
        "logits' argmax is the class")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch prints a progress line per conversion step on stdout and warns about
    deprecated torch.export APIs, and ai-edge-quantizer draws a calibration progress bar on
    stderr; the export's own table says what happened."""
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        warnings.simplefilter("ignore")
        yield
