"""Bundles for apps: an exported artifact, its metadata, labels and usage snippets per runtime.

    from kdpipe.deploy import build_bundle
    build_bundle("export/resnet20.int8.ort", "app/model")

The bench stage lives in `kdpipe.bench` and the runtimes in `kdpipe.runtime`; the names this
package exported before they moved (`run_bench`, `BenchConfig`, `open_artifact`, `RUNTIMES`, ...)
still import from here, lazily (PEP 562), as aliases of their new homes.
"""

from __future__ import annotations

from kdpipe.lazy import lazy_exports

_EXPORTS = {
    "build_bundle": "kdpipe.deploy.bundle",
    "SNIPPETS": "kdpipe.deploy.snippets",
    # aliases of the names that moved to kdpipe.runtime, kdpipe.bench and kdpipe.catalog
    "RUNTIMES": "kdpipe.runtime",
    "Runtime": "kdpipe.runtime",
    "Session": "kdpipe.runtime",
    "runtime": "kdpipe.runtime",
    "runtimes_for": "kdpipe.runtime",
    "Artifact": "kdpipe.runtime.artifact",
    "open_artifact": "kdpipe.runtime.artifact",
    "LatencyStats": "kdpipe.runtime.latency",
    "measure": "kdpipe.runtime.latency",
    "summarize": "kdpipe.runtime.latency",
    "time_calls": "kdpipe.runtime.latency",
    "BenchConfig": "kdpipe.bench.config",
    "run_bench": "kdpipe.bench.bench",
    "catalog": "kdpipe.catalog",
    "print_catalog": "kdpipe.catalog",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
