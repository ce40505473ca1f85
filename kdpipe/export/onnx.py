"""ONNX: one self-contained `.onnx` file (weights inlined), run by ONNX Runtime.

Exported with the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`), opset 18,
with a dynamic batch dimension, or a fully static input shape when batch 1 is the only size asked
(`--batch-sizes 1`): ONNX Runtime Mobile's NNAPI and Core ML providers take no node of a graph
with a dynamic batch. fp16 converts the graph to float16 with float32 inputs and outputs (ONNX
Runtime's converter); int8 is ONNX Runtime's static QDQ quantization (`INT8_SCHEME` below).

A checkpoint from quantization-aware distillation (`kdpipe distill --qat`) carries learned
activation ranges (`kdpipe.models.checkpoint.LearnedQuantization`); its int8 file is the same QDQ
quantization with those ranges instead of calibrated ones (`QAT_INT8_SCHEME`): each activation
tensor of the FP32 graph is matched to the learned range whose fingerprint (per-channel moments
on the checkpoint's probe images) it shares, and passed to the quantizer as its exact scale and
zero point (`TensorQuantOverrides`). Weights are quantized from the weights, on the 7-bit grid
the training used. Tensors training did not quantize keep calibrated ranges; the sidecar lists
them (`details.learned_quantization`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from kdpipe.export.mobile import mobile_usability
from kdpipe.models.checkpoint import ActivationRange, LearnedQuantization, learned_quantization

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CALIBRATION_BATCH = 64
CALIBRATION_PERCENTILE = 99.999  # activation ranges clip the top 0.001% of values
# uint8 activations x int8 weights ("U8S8") is the only int8 scheme ONNX Runtime runs fast on
# x86 (S8S8 and U8U8 ran at 0.4x of its speed on the project's CPUs). On x86 CPUs without VNNI
# its kernels multiply with vpmaddubsw, which adds two u8*s8 products into a saturating int16:
# 255 * 127 * 2 > 32767, so full-range weights overflow (ONNX Runtime's quantization docs) and a
# ResNet20 kept only 92% of its FP32 predictions on an AVX2 EPYC. 7-bit weights (`reduce_range`)
# bound the pair at 255 * 64 * 2 = 32640 and cannot overflow: the file computes the same on AVX2,
# VNNI/AMX (int32 accumulation) and ARM (sdot/udot, int32), where 7-bit weights only cost
# precision, which percentile activation ranges win back (98.4% agreement on the pretrained
# ResNet20 and ResNet56, against 97.6% with min/max ranges).
INT8_SCHEME = {
    "name": "U8S8, 7-bit weights",
    "activations": "uint8, asymmetric, per tensor",
    "weights": "int8 symmetric per channel, reduced to 7 bits (reduce_range)",
    "calibration": f"percentile {CALIBRATION_PERCENTILE} of activations on training images",
    "reason": "7-bit weights cannot overflow the 16-bit intermediate sums of x86 int8 kernels "
              "without VNNI (AVX2, AVX-512 without VNNI), so the file gives the same outputs on "
              "those, on VNNI/AMX x86 and on ARM; full 8-bit weights saturate there",
}
QAT_INT8_SCHEME = {
    **INT8_SCHEME,
    "name": "U8S8, 7-bit weights, learned activation ranges (QAT)",
    "calibration": "learned (QAT): the moving-average activation ranges of quantization-aware "
                   "distillation, as exact scales and zero points; percentile "
                   f"{CALIBRATION_PERCENTILE} calibration only for tensors training did not "
                   "quantize (details.learned_quantization.calibrated)",
    "trained": "int8 asymmetric activations (the uint8 grid shifted by 128: identical) and int8 "
               "per-channel symmetric weights on the same 7-bit grid [-64, 64]",
}
# Ops that only move values (no arithmetic): their output is on their input's grid, as in the
# trained graph, which quantizes none of them itself.
_MOVES_VALUES = {"Slice", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
INT8_DETAIL = ("static QDQ (onnxruntime.quantization.quantize_static): int8 per-channel symmetric "
               "7-bit weights (reduce_range, safe from x86 int16 saturation), uint8 asymmetric "
               "activations with percentile ranges from calibration images")
QAT_INT8_DETAIL = ("static QDQ (onnxruntime.quantization.quantize_static): int8 per-channel "
                   "symmetric 7-bit weights (reduce_range, the grid QAT trained on), uint8 "
                   "asymmetric activations with the ranges learned by quantization-aware "
                   "distillation")
FP16_DETAIL = ("float16 weights and arithmetic (onnxruntime.transformers.float16), float32 input "
               "and output")


@register_target
class OnnxTarget(Target):
    name = "onnx"
    suffix = ".onnx"
    runtime = "onnxruntime"
    libraries = ("onnx", "onnxruntime", "onnxscript")
    quantizations = {
        "none": "fp32",
        "fp16": "fp16 graph, fp32 I/O",
        "int8": "static QDQ, U8S8 7-bit weights, calibrated or QAT-learned ranges",
    }
    learns_int8 = True

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One file: a dynamic batch dimension, or a static [1, C, H, W] for batch 1 only."""
        return [write_onnx(model, meta, quantize, calibration, path, batch_sizes)]

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        import json

        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
        return json.loads(props[EMBEDDED_KEY]) if EMBEDDED_KEY in props else None


def write_onnx(model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> Exported:
    """Export, convert to `quantize`, embed the metadata and check the file (onnx and ort)."""
    import onnx

    static = list(batch_sizes) == [1]
    learned = learned_quantization(model) if quantize == "int8" else None
    fp32_path = path.with_name(path.name + ".fp32.tmp")
    _export_fp32(model, example_input(meta, 2), fp32_path)
    try:
        if learned is None:
            proto, int8 = CONVERTERS[quantize](fp32_path, calibration), {}
        else:
            proto, int8 = _to_int8_learned(fp32_path, calibration, learned)
    finally:
        fp32_path.unlink(missing_ok=True)
    if static:  # fixed after conversion, so int8 calibrates in batches of 64, not of 1
        _fix_batch(proto, 1)
    if quantize == "int8":
        scheme = INT8_SCHEME if learned is None else QAT_INT8_SCHEME
        int8 = {"int8_scheme": scheme, **int8}
    exported = Exported(
        path=path, batch_sizes=[1] if static else None, input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        quantization_detail=QAT_INT8_DETAIL if learned is not None else DETAILS[quantize],
        details={"opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)",
                 "ops": len(proto.graph.node), **int8},
    )
    _strip_debug_info(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    exported.details["mobile_usability"] = mobile_usability(path)  # of the graph, so embedded too
    if not static:
        exported.notes.append("dynamic batch: ONNX Runtime Mobile's NNAPI and Core ML providers "
                              "take no node of it; export with --batch-sizes 1 for a phone")
    _set_metadata(proto, {EMBEDDED_KEY: with_io(meta, exported).embedded_json()})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return exported


def _export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export-based ONNX export with a dynamic batch dimension, weights inside the file."""
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
        optimize=True, verbose=False,
    )
    program.save(str(path), external_data=False)


def _fix_batch(proto: Any, size: int) -> None:
    """Replace the symbolic batch dimension by `size` everywhere (inputs, values, outputs)."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dim.dim_param:
        make_dim_param_fixed(proto.graph, dim.dim_param, size)
    fix_output_shapes(proto)


def _to_fp32(path: Path, calibration: Calibration | None) -> Any:
    import onnx

    return onnx.load(str(path))


def _to_fp16(path: Path, calibration: Calibration | None) -> Any:
    """Float16 weights and arithmetic; `keep_io_types` leaves the float32 input and output."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    # The converter appends its input/output casts at the end of the node list; ONNX requires
    # nodes in topological order.
    model = OnnxModel(proto)
    model.topological_sort()
    return model.model


def _to_int8(path: Path, calibration: Calibration | None,
             overrides: dict[str, list[dict[str, Any]]] | None = None) -> Any:
    """Static QDQ quantization calibrated on `calibration` (required); `overrides` fix the
    scale and zero point of some tensors (`TensorQuantOverrides`) whatever calibration finds."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None:
        raise ValueError("int8 ONNX export needs calibration images")

    # Equal batches: the percentile calibrator stacks each tensor's batches into one array.
    size = _even_batch(len(calibration.images), CALIBRATION_BATCH)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.batches(size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out = path.with_name(path.name + ".int8.tmp")
    try:
        with _quiet_root_logger():  # see INT8_SCHEME for the choices
            quantize_static(
                str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE,
                               **({"TensorQuantOverrides": overrides,
                                   # ORT drops a Relu/Clip and lets the quantization of the tensor
                                   # before it do the clamping. A learned range is the one the
                                   # fake quantizer had: for ReLU6 (MobileNetV2), which XNNPACK's
                                   # quantizer does not fuse into the conv, that range is the
                                   # conv's, negatives included, so dropping the Clip would drop
                                   # the clamp (top-1 19% instead of 78%). Keep them.
                                   "QDQKeepRemovableActivations": True} if overrides else {})},
            )
        return onnx.load(str(out))
    finally:
        out.unlink(missing_ok=True)


def _even_batch(n: int, most: int) -> int:
    """The largest batch size up to `most` that splits `n` images into equal batches."""
    return next(size for size in range(min(n, most), 0, -1) if n % size == 0)


def _to_int8_learned(path: Path, calibration: Calibration | None,
                     learned: LearnedQuantization) -> tuple[Any, dict[str, Any]]:
    """`_to_int8` with the learned activation ranges of a QAT checkpoint; also returns the
    sidecar's account of which quantized tensors got a learned range."""
    ranges = learned_ranges(path, learned)
    overrides = {
        # x = s * (q8 - z8), q8 in [-128, 127]  <=>  x = s * (u8 - (z8 + 128)), u8 in [0, 255]
        name: [{"scale": np.array(r.scale, dtype=np.float32),
                "zero_point": np.array(r.zero_point - r.quant_min, dtype=np.uint8)}]
        for name, r in ranges.items()}
    proto = _to_int8(path, calibration, overrides)
    quantized = _quantized_activations(proto)
    calibrated = sorted(name for name in quantized if name not in ranges)
    return proto, {"learned_quantization": {
        "learned": len(quantized) - len(calibrated), "calibrated": calibrated,
        "trained_scheme": learned.scheme}}


def learned_ranges(path: Path, learned: LearnedQuantization) -> dict[str, ActivationRange]:
    """ONNX tensor name -> learned range, for the tensors of the FP32 file at `path` that hold
    a learned activation (same fingerprint on the probe images) or move one's values."""
    import onnx

    proto = onnx.load(str(path))
    ranges = learned.match(_probe_activations(proto, learned.probe.numpy()))
    for node in proto.graph.node:  # nodes are in topological order
        if node.op_type in _MOVES_VALUES and node.input[0] in ranges:
            ranges.setdefault(node.output[0], ranges[node.input[0]])
    return {name: r for name, r in ranges.items() if r.quant_max - r.quant_min == 255}


def _probe_activations(proto: Any, probe: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor of the graph (its input, each node's output) on the probe images,
    computed with graph optimizations off, so no tensor is fused away."""
    import onnx
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(proto)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    outputs = [name for node in proto.graph.node for name in node.output if name in floats]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(proto)
    del augmented.graph.output[:]
    augmented.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(augmented.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = session.run(outputs, {INPUT_NAME: probe.astype(np.float32)})
    return {INPUT_NAME: probe, **dict(zip(outputs, values, strict=True))}


def _quantized_activations(proto: Any) -> list[str]:
    """The activation tensors a QDQ graph quantizes: the inputs of its QuantizeLinear nodes that
    are not weights (ONNX Runtime renames a quantized graph output `X` to
    `X_QuantizeLinear_Input`)."""
    weights = {init.name for init in proto.graph.initializer}
    suffix = "_QuantizeLinear_Input"
    return sorted({n.input[0].removesuffix(suffix) for n in proto.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in weights})


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer, which logs a pre-processing hint on the root logger at
    every call (the exporter already folds BN and infers shapes; its `quant_pre_process` made no
    difference to accuracy here) and prints its histogram calibrator's progress, and restore
    the level after."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


CONVERTERS = {"none": _to_fp32, "fp16": _to_fp16, "int8": _to_int8}
DETAILS = {"none": "", "fp16": FP16_DETAIL, "int8": INT8_DETAIL}


def _strip_debug_info(proto: Any) -> None:
    """Drop the exporter's per-node stack traces and module paths.

    They are a third of an int8 file's bytes and hold the exporting machine's file paths.
    """
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.metadata_props[:]
    del proto.metadata_props[:]


def _set_metadata(proto: Any, values: dict[str, str]) -> None:
    import onnx

    onnx.helper.set_model_props(proto, values)
