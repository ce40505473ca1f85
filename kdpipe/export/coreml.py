"""Core ML: `.mlpackage` ML programs converted by coremltools from `torch.export`.

The batch-1 artifact is a classifier (`ClassifierConfig`: outputs `classLabel` and the dict
`classLabel_probs` of softmax probabilities), the form an app's Vision/Core ML code expects.
Core ML classifiers take one image per prediction (coremltools refuses a classifier for a batch
other than 1, and a flexible batch converts but fails on device: apple/coremltools#2764), so each
other requested batch size gets its own fixed-shape artifact whose output is the `logits` array.

Precision: `fp16` (the default) computes in float16; `none` in float32; `int8` stores weights as
int8 (`linear_quantize_weights`, per-channel symmetric) and computes in float16. Inputs are always
float32. Prediction needs macOS: elsewhere the saved spec is checked (inputs, outputs, labels,
ops) and the metadata says plainly that numerical parity was not checked.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdpipe.export.base import (
    Calibration,
    Exported,
    Target,
    batch_variant,
    example_input,
    register_target,
    with_io,
)
from kdpipe.export.metadata import EMBEDDED_KEY, ArtifactMetadata

INPUT_NAME = "input"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"
LOGITS_NAME = "logits"
DEPLOYMENT_TARGET = "iOS16"  # also macOS 13: int8 weights (constexpr ops) need it
PRECISIONS = {"none": "FLOAT32", "fp16": "FLOAT16", "int8": "FLOAT16"}
DETAILS = {
    "none": "float32 weights and compute",
    "fp16": "float16 weights and compute, float32 input",
    "int8": "int8 per-channel symmetric weights (linear_quantize_weights), float16 compute",
}
NOT_ON_MACOS = "Core ML prediction needs macOS"


@register_target
class CoreMLTarget(Target):
    name = "coreml"
    suffix = ".mlpackage"
    runtime = "coreml"
    unchecked_note = "; the saved spec was checked instead"
    quantizations = {"none": "fp32 compute", "fp16": "fp16 compute (default)",
                     "int8": "int8 weights, fp16 compute"}
    default_quantize = "fp16"
    package = "coremltools"
    extra = "coreml"
    libraries = ("coremltools",)

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One fixed-batch `.mlpackage` per batch size (batch 1: the classifier)."""
        results = []
        for b in sorted(set(batch_sizes)):
            exported = _describe(batch_variant(path, b), b, quantize)
            mlmodel, source = _convert(model, meta, quantize, b)
            _annotate(mlmodel, with_io(meta, exported))
            mlmodel.save(str(exported.path))
            exported.details["source"] = source
            exported.details["spec"] = _check_spec(exported, meta)
            results.append(exported)
        return results

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        import coremltools as ct

        values = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
        return json.loads(values[EMBEDDED_KEY]) if EMBEDDED_KEY in values else None


def _describe(path: Path, batch: int, quantize: str) -> Exported:
    classifier = batch == 1
    return Exported(
        path=path, batch_sizes=[batch], input_name=INPUT_NAME,
        output_name=PROBS_NAME if classifier else LOGITS_NAME,
        output_kind="probabilities" if classifier else "logits",
        label_output_name=LABEL_NAME if classifier else None,
        quantization_detail=DETAILS[quantize],
        details={"compute_precision": PRECISIONS[quantize], "classifier": classifier,
                 "minimum_deployment_target": DEPLOYMENT_TARGET, "model_type": "mlprogram"},
        notes=[] if classifier else ["Core ML classifiers take one image per prediction; this "
                                     f"batch-{batch} artifact outputs the logits array instead"],
    )


def _convert(model: nn.Module, meta: ArtifactMetadata, quantize: str,
             batch: int) -> tuple[Any, str]:
    """The ML program, and what it was converted from: `torch.export`, or a trace if that fails."""
    import coremltools as ct

    classifier = batch == 1
    # The classifier's probabilities should be probabilities, as Core ML apps read them.
    net = nn.Sequential(model, nn.Softmax(dim=1)).eval() if classifier else model
    example = example_input(meta, batch)
    kwargs: dict[str, Any] = {
        "convert_to": "mlprogram",
        "inputs": [ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
        "compute_precision": getattr(ct.precision, PRECISIONS[quantize]),
        "minimum_deployment_target": getattr(ct.target, DEPLOYMENT_TARGET),
    }
    if classifier:
        kwargs["classifier_config"] = ct.ClassifierConfig(list(meta.classes))
    else:
        kwargs["outputs"] = [ct.TensorType(name=LOGITS_NAME, dtype=np.float32)]
    try:
        source = torch.export.export(net, (example,)).run_decompositions({})
        mlmodel, how = ct.convert(source, **kwargs), "torch.export"
    except Exception as e:  # noqa: BLE001 - any converter failure falls back to the trace path
        traced = torch.jit.trace(net, example)
        mlmodel, how = ct.convert(traced, **kwargs), f"torch.jit.trace (torch.export failed: {e})"
    if quantize == "int8":
        mlmodel = _int8_weights(mlmodel)
    return mlmodel, how


def _int8_weights(mlmodel: Any) -> Any:
    """Per-channel symmetric int8 weights, quantized from the float16 program's weights.

    A channel whose largest |weight| is below ~7.6e-6 gets a scale that underflows float16 to 0
    (coremltools then warns of 0/0): its weights dequantize to exactly 0, which is what float16
    arithmetic makes of them anyway. The pretrained ResNet20 has such near-dead channels.
    """
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="coremltools")
        return cto.linear_quantize_weights(mlmodel, config=config)


def _annotate(mlmodel: Any, meta: ArtifactMetadata) -> None:
    """Embed kdpipe's metadata and describe the input for Xcode's model viewer."""
    mlmodel.user_defined_metadata[EMBEDDED_KEY] = meta.embedded_json()
    mlmodel.author = f"kdpipe {meta.kdpipe_version}"
    mlmodel.short_description = (f"{meta.model} image classifier over {len(meta.classes)} "
                                 "classes, normalization folded in")
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image as float32 in [0, 1], NCHW {meta.input_shape_batched}")


def _check_spec(exported: Exported, meta: ArtifactMetadata) -> dict[str, Any]:
    """Reload the saved package's spec (no prediction) and verify what an app relies on."""
    import coremltools as ct

    spec = ct.models.MLModel(str(exported.path), skip_model_load=True).get_spec()
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    function = spec.mlProgram.functions["main"]
    operations = function.block_specializations[function.opset].operations
    ops = [op.type for op in operations]
    expected_inputs = {INPUT_NAME: list(exported.batch_sizes or [1]) + list(meta.input_shape)}
    problems = []
    if inputs != expected_inputs:
        problems.append(f"inputs {inputs}, expected {expected_inputs}")
    if exported.output_name not in outputs:
        problems.append(f"outputs {outputs} lack {exported.output_name}")
    if exported.label_output_name and spec.description.predictedFeatureName != LABEL_NAME:
        problems.append("not a classifier")
    labels = _class_labels(operations)
    if exported.label_output_name and labels != list(meta.classes):
        problems.append(f"class labels {labels}, expected {list(meta.classes)}")
    if problems:
        raise RuntimeError(f"the saved Core ML spec is wrong: {'; '.join(problems)}")
    return {"spec_version": spec.specificationVersion, "inputs": inputs, "outputs": outputs,
            "class_labels": len(labels), "ops": len(ops), "op_types": sorted(set(ops))}


def _class_labels(operations: Any) -> list[str]:
    """The labels of the program's `classify` op (an inline list of strings), or []."""
    for op in operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def _classify(model: Any, images: np.ndarray, classes: list[str]) -> np.ndarray:
    """Probabilities [N, classes] from one classifier prediction per image."""
    rows = []
    for image in images:
        probs = model.predict({INPUT_NAME: image[None]})[PROBS_NAME]
        rows.append([probs[c] for c in classes])
    return np.asarray(rows, dtype=np.float32)
