"""The export stage: checkpoint -> TorchScript, ONNX, Core ML or ExecuTorch artifacts, each with
its metadata and a parity check against PyTorch.

    from kdpipe.export import export_checkpoint, read_metadata
    results = export_checkpoint("runs/resnet20/model.pt", "onnx", "int8", "export/")
    meta = read_metadata(results[0].path)      # the JSON sidecar, no kdpipe model import

Names are imported on first use (PEP 562): `kdpipe.export.metadata` must stay importable without
PyTorch for readers of artifacts, and no optional package (coremltools, executorch) is imported
until a target of theirs runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TARGETS": "kdpipe.export.targets",
    "Target": "kdpipe.export.base",
    "Normalized": "kdpipe.export.base",
    "Calibration": "kdpipe.export.base",
    "Exported": "kdpipe.export.base",
    "Runner": "kdpipe.export.base",
    "register_target": "kdpipe.export.base",
    "ExportConfig": "kdpipe.export.config",
    "support_table": "kdpipe.export.config",
    "ExportResult": "kdpipe.export.api",
    "ExportFailed": "kdpipe.export.api",
    "export_checkpoint": "kdpipe.export.api",
    "run_export": "kdpipe.export.api",
    "read_embedded_metadata": "kdpipe.export.api",
    "print_results": "kdpipe.export.api",
    "ArtifactMetadata": "kdpipe.export.metadata",
    "ParityReport": "kdpipe.export.metadata",
    "read_metadata": "kdpipe.export.metadata",
    "sidecar_path": "kdpipe.export.metadata",
    "artifact_sha256": "kdpipe.export.metadata",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdpipe.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
