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

from kdpipe.lazy import lazy_exports

_EXPORTS = {
    "TARGETS": "kdpipe.export.targets",
    "Target": "kdpipe.export.base",
    "Normalized": "kdpipe.export.base",
    "Calibration": "kdpipe.export.base",
    "Exported": "kdpipe.export.base",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
