"""Which ONNX Runtime Mobile execution providers can take an ONNX graph, node by node.

ONNX Runtime Mobile hands the nodes an accelerator supports to its execution provider: NNAPI on
Android, Core ML on iOS; the rest runs on the CPU. Both need fixed shapes: with a dynamic batch
dimension NNAPI and Core ML take none of a ResNet20's nodes, with a fixed batch NNAPI takes all
of them. This is ONNX Runtime's own `check_onnx_model_mobile_usability` analysis (the graph
optimized to the basic level first, as the ORT-format conversion does), returned as numbers for
the sidecar and the export table instead of log lines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

# The providers the checker knows, and the supported-op list each one reads.
PROVIDERS = {
    "NNAPI": None,
    "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
    "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
}


def mobile_usability(onnx_path: Path) -> dict[str, dict[str, Any]]:
    """Per provider: `nodes`, `supported` (nodes it takes with the shapes as they are),
    `partitions` and ONNX Runtime's `verdict` (YES / MAYBE / NO: worth trying that provider)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / onnx_path.name
        optimize_model(onnx_path, optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        results = {}
        for provider, ops_file in PROVIDERS.items():
            if ops_file is None:
                info = checker.check_nnapi_partitions(model, require_fixed_input_sizes=True)
            else:
                info = checker.check_coreml_partitions(model, True, ops_file)
            results[provider] = {
                "nodes": info.num_nodes,
                "supported": info.num_supported_nodes,
                "partitions": info.num_partitions,
                "verdict": info.suitability().name,
            }
    return results


def summary(usability: dict[str, dict[str, Any]]) -> str:
    """"NNAPI 58/58, CoreML 58/58" (Core ML: the ML Program format, what current iOS uses)."""
    parts = []
    for provider, short in (("NNAPI", "NNAPI"), ("CoreML MLProgram", "CoreML")):
        if provider in usability:
            n = usability[provider]
            parts.append(f"{short} {n['supported']}/{n['nodes']}")
    return ", ".join(parts)
