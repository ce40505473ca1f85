"""Stage three: run artifacts (and checkpoints) in their runtimes, here or on a device over
ssh://, and measure accuracy, latency and memory by one protocol into one report.

    from kdpipe.bench import BenchConfig, run_bench
    report, files = run_bench(["resnet20.onnx", "resnet20.pt"], BenchConfig(batch_sizes=[1, 32]))

Names are imported on first use (PEP 562): the memory-measuring subprocess imports
`kdpipe.bench.measure_memory` and must not pay for PyTorch or the report writers, and optional
runtimes (executorch, coremltools, tensorrt) are never imported by `import kdpipe.bench`.
"""

from __future__ import annotations

from kdpipe.lazy import lazy_exports

_EXPORTS = {
    "BenchConfig": "kdpipe.bench.config",
    "run_bench": "kdpipe.bench.bench",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
