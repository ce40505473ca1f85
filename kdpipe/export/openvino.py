"""OpenVINO IR: `resnet20.xml` (the graph) with its weights in `resnet20.bin` beside it.

Converted by `openvino.convert_model` from the PyTorch model with a dynamic batch dimension, or a
fully static [1, C, H, W] input when batch 1 is the only size asked (`--batch-sizes 1`). The
`.bin` is a companion file (`kdpipe.export.metadata.COMPANION_SUFFIXES`): it is published,
hashed, sized, bundled and uploaded with the `.xml`. The metadata is embedded too, in the IR's
`rt_info["kdpipe"]`.

- fp32: `save_model(..., compress_to_fp16=False)` (OpenVINO's default would halve the weights).
- fp16: float16 weights (`compress_to_fp16=True`), float32 input and output; the CPU plugin
  computes in float32 (see `kdpipe.runtime.openvino`).
- int8: NNCF post-training quantization (`nncf.quantize`, PERFORMANCE preset: symmetric int8
  weights and activations) calibrated on the training images, with NNCF's full bias correction:
  its default fast correction kept 96.8-97.0% of the pretrained ResNet20's top-1s on 1,000 test
  images (256 or 520 calibration images), below kdpipe's 97% gate; the full one kept 97.8-98.0%.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdpipe.export.base import (
    Calibration,
    Exported,
    Target,
    example_input,
    register_target,
    with_io,
)
from kdpipe.export.metadata import EMBEDDED_KEY, ArtifactMetadata

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FP16_DETAIL = "float16 weights (compress_to_fp16), float32 input, output and CPU arithmetic"
INT8_DETAIL = ("NNCF post-training quantization (nncf.quantize, PERFORMANCE preset): int8 "
               "symmetric per-channel weights, int8 symmetric activations calibrated on training "
               "images, full bias correction")
DETAILS = {"none": "", "fp16": FP16_DETAIL, "int8": INT8_DETAIL}


@register_target
class OpenVinoTarget(Target):
    name = "openvino"
    suffix = ".xml"
    runtime = "openvino"
    quantizations = {
        "none": "fp32 IR",
        "fp16": "fp16 weights, fp32 I/O",
        "int8": "NNCF post-training, calibrated",
    }
    package = "openvino"
    extra = "openvino"
    libraries = ("openvino", "nncf")

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One IR: a dynamic batch dimension, or a static [1, C, H, W] for batch 1 only."""
        import openvino as ov

        static = list(batch_sizes) == [1]
        batch = 1 if static else -1
        with _quiet():
            ir = ov.convert_model(model, example_input=example_input(meta, 1),
                                  input=[[batch, *meta.input_shape]])
            ir.input(0).get_tensor().set_names({INPUT_NAME})
            ir.output(0).get_tensor().set_names({OUTPUT_NAME})
            if quantize == "int8":
                ir = _int8(ir, calibration)
        exported = Exported(
            path=path, batch_sizes=[1] if static else None, input_name=INPUT_NAME,
            output_name=OUTPUT_NAME, quantization_detail=DETAILS[quantize],
            details={"converter": "openvino.convert_model", "weights_file": path.with_suffix(
                ".bin").name, "device": "CPU", "inference_precision_hint": "f32"},
            notes=[f"the weights are in {path.with_suffix('.bin').name}: ship it beside "
                   f"{path.name}"],
        )
        ir.set_rt_info(with_io(meta, exported).embedded_json(), [EMBEDDED_KEY])
        ov.save_model(ir, str(path), compress_to_fp16=quantize == "fp16")
        return [exported]

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        import openvino as ov

        ir = ov.Core().read_model(str(path))
        if not ir.has_rt_info([EMBEDDED_KEY]):
            return None
        return json.loads(ir.get_rt_info([EMBEDDED_KEY]).astype(str))


def _int8(ir: Any, calibration: Calibration | None) -> Any:
    """NNCF post-training quantization, one calibration image per item (a static IR takes one)."""
    import nncf

    if calibration is None:
        raise ValueError("int8 OpenVINO export needs calibration images")
    items = calibration.batches(1)
    return nncf.quantize(ir, nncf.Dataset(items), subset_size=len(items),
                         preset=nncf.QuantizationPreset.PERFORMANCE,
                         fast_bias_correction=False)  # see the module docstring


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws progress bars and logs each step; torch tracing warns. The export's own table
    says what happened."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
