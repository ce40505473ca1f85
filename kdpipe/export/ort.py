"""ORT format: the `.ort` flat-buffer file of ONNX Runtime Mobile and onnxruntime-react-native.

The model is exported to ONNX exactly as the `onnx` target does (same graph, same quantization,
same embedded metadata), then converted by ONNX Runtime's own
`onnxruntime.tools.convert_onnx_models_to_ort` with its fixed optimizations for ARM (the CPUs of
phones): the converter leaves out x86-only layout rewrites (NCHWc), so the same file runs on
phones and, for the parity check and bench here, in the desktop ONNX Runtime. Export with
`--batch-sizes 1` for NNAPI or Core ML: their providers need a static input shape.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdpipe.export.base import Calibration, Exported, register_target
from kdpipe.export.metadata import EMBEDDED_KEY, ArtifactMetadata
from kdpipe.export.onnx import OnnxTarget, write_onnx

TARGET_PLATFORM = "arm"


@register_target
class OrtTarget(OnnxTarget):
    """The `onnx` target's graph, quantizations and runtime, in ORT's flat-buffer format."""

    name = "ort"
    suffix = ".ort"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """The `onnx` target's file, converted; the ONNX source stays in the staging folder
        until the parity check has compared the two."""
        source = _source(path)
        exported = write_onnx(model, meta, quantize, calibration, source, batch_sizes)
        _convert(source, path)
        exported.path = path
        exported.details.update(
            converter="onnxruntime.tools.convert_onnx_models_to_ort (optimization style Fixed)",
            target_platform=TARGET_PLATFORM)
        return [exported]

    def simulation_source(self, exported: Exported) -> Path | None:
        """The staged ONNX file: an `.ort` holds its graph already optimized, so only its
        source can be run with the quantization simulated in float."""
        source = _source(exported.path)
        return source if source.exists() else None

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        return json.loads(props[EMBEDDED_KEY]) if EMBEDDED_KEY in props else None


def _source(path: Path) -> Path:
    """Where the ONNX file an `.ort` is converted from is staged: `x.int8.ort` -> `x.int8.onnx`."""
    return path.with_suffix(".onnx")


def _convert(source: Path, dest: Path) -> None:
    """ONNX -> ORT format with ONNX Runtime's converter, quietly (it prints every step)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    out = source.parent / "ort-out"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(source, output_dir=out,
                                   optimization_styles=[OptimizationStyle.Fixed],
                                   target_platform=TARGET_PLATFORM)
    (out / source.with_suffix(".ort").name).replace(dest)
