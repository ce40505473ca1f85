"""Peak memory of one artifact: a fresh process loads it, runs every benched batch size a few
times, and prints its own peak resident set size as JSON.

A fresh process, because the bench process itself holds every runtime it has loaded, the test
set and PyTorch: its high-water mark says nothing about one model. The child imports only the
runtime it measures (ONNX Runtime's number does not include PyTorch unless the runtime needs it),
so the figure is what an app process running that artifact would need, interpreter included.

    python -m kdpipe.bench.measure_memory ARTIFACT.json --runtime onnxruntime --threads 2 \
        --batch-sizes 1,32 [--import mymodels]

`--import` names the user's modules that register the model of a checkpoint (`kdpipe bench
--import`): the child imports them before it loads the file, as the bench process did.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from kdpipe.config import import_modules, import_specs_for_child
from kdpipe.errors import KdpipeError
from kdpipe.runtime.artifact import Artifact

CALLS_PER_BATCH = 3  # enough for lazily allocated buffers to reach their steady size
TIMEOUT_S = 600


def peak_rss_bytes() -> int | None:
    """This process's peak RSS: VmHWM on Linux, `ru_maxrss` elsewhere (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024) or None


def measure_in_subprocess(artifact: Artifact, runtime: str, threads: int,
                          batch_sizes: Sequence[int], scratch: Path,
                          imports: Sequence[str] = ()) -> float:
    """Peak RSS in MiB of a fresh `python -m kdpipe.bench.measure_memory` run of one artifact;
    `imports` are the user's modules (already imported here) that the child imports first."""
    spec = scratch / "artifact.json"
    spec.write_text(json.dumps(artifact.to_json()), encoding="utf-8")
    specs, roots = import_specs_for_child(imports)
    argv = [sys.executable, "-m", "kdpipe.bench.measure_memory", str(spec), "--runtime", runtime,
            "--threads", str(threads), "--batch-sizes", ",".join(map(str, batch_sizes)),
            *(arg for name in specs for arg in ("--import", name))]
    path = os.pathsep.join(p for p in (_kdpipe_root(), *roots, os.environ.get("PYTHONPATH"))
                           if p)
    env = {**os.environ, "PYTHONPATH": path}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise KdpipeError(f"measuring memory took over {TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KdpipeError(f"memory subprocess failed: {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result.get("peak_rss_bytes"):
        raise KdpipeError("this platform does not report peak memory")
    return result["peak_rss_bytes"] / 2**20


def _kdpipe_root() -> str:
    """The folder holding the `kdpipe` package, so the child imports this same kdpipe."""
    import kdpipe

    return str(Path(kdpipe.__file__).resolve().parents[1])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_json", type=Path, help="Artifact.to_json() of the file to load")
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated, e.g. 1,32")
    parser.add_argument("--calls", type=int, default=CALLS_PER_BATCH)
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="a module (or .py file) registering the checkpoint's model")
    args = parser.parse_args(argv)
    import_modules(args.imports)

    from kdpipe.runtime import runtime
    from kdpipe.runtime.latency import random_input

    artifact = Artifact.from_json(json.loads(args.artifact_json.read_text(encoding="utf-8")))
    session = runtime(args.runtime).load(artifact, args.threads)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        x = random_input(batch_size, artifact.input_shape)
        for _ in range(args.calls):
            session.run(x)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


if __name__ == "__main__":
    main()
