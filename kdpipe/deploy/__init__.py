"""Stage three: run exported artifacts (and checkpoints) in their runtimes, here or on a device
over ssh://, measure accuracy, latency and memory by one protocol, and bundle files for apps.

    from kdpipe.deploy import BenchConfig, run_bench, build_bundle
    report, files = run_bench(["resnet20.onnx", "resnet20.pt"], BenchConfig(batch_sizes=[1, 32]))
    build_bundle("resnet20.onnx", "app/model")

Names are imported on first use (PEP 562): the memory-measuring subprocess imports
`kdpipe.deploy.measure_memory` and must not pay for PyTorch or the report writers, and optional
runtimes (executorch, coremltools, tensorrt) are never imported by `import kdpipe.deploy`.
"""

from __future__ import annotations

from kdpipe.lazy import lazy_exports

_EXPORTS = {
    "RUNTIMES": "kdpipe.deploy.runtimes",
    "Runtime": "kdpipe.deploy.runtimes",
    "Session": "kdpipe.deploy.runtimes",
    "runtime": "kdpipe.deploy.runtimes",
    "runtimes_for": "kdpipe.deploy.runtimes",
    "Artifact": "kdpipe.deploy.artifact",
    "open_artifact": "kdpipe.deploy.artifact",
    "BenchConfig": "kdpipe.deploy.config",
    "run_bench": "kdpipe.deploy.bench",
    "LatencyStats": "kdpipe.deploy.latency",
    "measure": "kdpipe.deploy.latency",
    "summarize": "kdpipe.deploy.latency",
    "time_calls": "kdpipe.deploy.latency",
    "build_bundle": "kdpipe.deploy.bundle",
    "catalog": "kdpipe.deploy.catalog",
    "print_catalog": "kdpipe.deploy.catalog",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
