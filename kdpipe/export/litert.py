"""LiteRT (TensorFlow Lite): one `.tflite` flat buffer per batch size, run by LiteRT's Interpreter.

Converted by `litert_torch.convert` (torch.export -> MLIR -> TFLite flat buffer), which keeps the
PyTorch layout: the input is float32 NCHW in [0, 1] with the normalization folded in, like every
kdpipe artifact. Its input shape is static (litert-torch 0.10 fails to convert this graph with a
dynamic batch dimension), so each requested batch size gets its own file (`batch_variant`).

- fp16: ai-edge-quantizer's weight-only FLOAT_CASTING: float16 weights, dequantized by the
  runtime (XNNPACK keeps them fp16 where the CPU computes in fp16); float32 input and output.
- int8: PT2E static quantization with litert-torch's quantizer (int8 symmetric per-channel
  weights, int8 activations calibrated on training images), lowered with its `QuantConfig`. The
  input stays float32, so an app feeds the same tensor at every precision; the output is the
  last layer's int8 logits with their scale and zero point (argmax needs no dequantization;
  `kdpipe.runtime.litert` dequantizes them).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
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

FP16_DETAIL = ("float16 weights (ai-edge-quantizer weight-only FLOAT_CASTING), float32 input "
               "and output")
INT8_DETAIL = ("PT2E static quantization (litert_torch PT2EQuantizer): int8 symmetric per-channel "
               "weights, int8 activations calibrated on training images; float32 input, int8 "
               "output logits with a scale and zero point")
DETAILS = {"none": "", "fp16": FP16_DETAIL, "int8": INT8_DETAIL}
CALIBRATION_BATCH = 64


@register_target
class LiteRtTarget(Target):
    name = "litert"
    suffix = ".tflite"
    runtime = "litert"
    quantizations = {
        "none": "fp32, XNNPACK",
        "fp16": "fp16 weights, fp32 I/O",
        "int8": "PT2E static, per-channel, calibrated; fp32 in, int8 out",
    }
    package = "litert_torch"
    extra = "litert"
    libraries = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torchao")

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One static-shape file per batch size (int8: quantized once, lowered per size)."""
        with _quiet():
            int8 = _int8(model, meta, calibration) if quantize == "int8" else None
        results = []
        for b in sorted(set(batch_sizes)):
            exported = Exported(
                path=batch_variant(path, b), batch_sizes=[b], input_name="args_0",
                output_name="output_0", quantization_detail=DETAILS[quantize],
                details={"converter": "litert_torch.convert", "signature": "serving_default",
                         "delegate": "XNNPACK (the Interpreter's default)"},
                notes=[f"static input shape [{b}, {', '.join(map(str, meta.input_shape))}]: "
                       "never resize_tensor_input it (the batch is baked into its reshapes); "
                       "export the batch sizes you need"],
            )
            with _quiet():
                _convert(model, meta, quantize, int8, b, exported.path)
            results.append(exported)
        return results


def _convert(model: nn.Module, meta: ArtifactMetadata, quantize: str,
             int8: tuple[nn.Module, Any] | None, batch: int, path: Path) -> None:
    """Lower to a flat buffer with a static [batch, C, H, W] input and write it to `path`."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    sample = (example_input(meta, batch),)
    if int8 is not None:
        quantized, quantizer = int8
        litert_torch.convert(quantized, sample, quant_config=QuantConfig(
            pt2e_quantizer=quantizer)).export(str(path))
        return
    converted = litert_torch.convert(model, sample)
    if quantize == "none":
        converted.export(str(path))
        return
    fp32 = path.with_name(path.name + ".fp32.tmp")
    converted.export(str(fp32))
    try:
        _fp16_weights(fp32, path)
    finally:
        fp32.unlink(missing_ok=True)


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


def _int8(model: nn.Module, meta: ArtifactMetadata,
          calibration: Calibration | None) -> tuple[nn.Module, Any]:
    """PT2E: annotate with litert-torch's quantizer, observe the calibration images, convert.

    The graph observed has a dynamic batch dimension, so calibration runs in batches of
    `CALIBRATION_BATCH`: one image per call through the histogram observers took 94 s for 256
    images, against 11 s in batches. Each batch size is then lowered from this one module.
    """
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None:
        raise ValueError("int8 LiteRT export needs calibration images")
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = PT2EQuantizer().set_global(config)
    graph = torch.export.export(model, (example_input(meta, 2),),
                                dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for images in calibration.batches(CALIBRATION_BATCH):
            prepared(torch.from_numpy(images))
    return convert_pt2e(prepared, fold_quantize=False), quantizer


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch prints a progress line per conversion step on stdout and warns about
    deprecated torch.export APIs; the export's own table says what happened."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
