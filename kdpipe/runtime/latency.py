"""The latency protocol: warm-up, timed calls on one pre-allocated input, percentiles, throughput.

Every runtime is timed by the same function, so numbers differ only by what the runtime does:

1. the input is one random float32 batch in [0, 1], allocated once and reused for every call;
2. `warmup` untimed calls first (default 20: lazy initialisation, allocator and cache warm-up);
3. then timed calls, each wrapped in `time.perf_counter_ns` (after a device `sync` where the
   runtime runs asynchronously, e.g. CUDA), until there are `iters` of them (default 100) *and*
   they add up to `min_time_s` (default 0 here, 1 s in `kdpipe bench`: 100 calls of a 0.3 ms
   model are a 30 ms sample, which one burst of a neighbour's work can move by half); a
   `budget_s` time budget stops the loop earlier (never before `MIN_TIMED_CALLS`);
4. p50/p90/p99 by `numpy.percentile` with linear interpolation; throughput = batch x calls / the
   sum of the timed call durations.

The clock and the sync are parameters, so the whole protocol is tested on a fake clock.
`docs/latency-protocol.md` is the long form; `remote_runner.py` carries a copy of these few lines
for devices without kdpipe, and a test checks that the two agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WARMUP = 20
DEFAULT_ITERS = 100
# `kdpipe bench`'s floor on timed seconds per batch size (the function's own default is 0): long
# enough that a neighbour's short burst of work barely moves a sub-millisecond model's p50,
# short enough for a dozen rows in a minute.
DEFAULT_MIN_TIME_S = 1.0
# A time budget never cuts the sample below this: p99 of fewer calls is the maximum in disguise.
MIN_TIMED_CALLS = 5
INPUT_SEED = 0


@dataclass(frozen=True)
class LatencyStats:
    """The summary of one (runtime, batch size) timing: milliseconds per call, images per second."""

    batch_size: int
    calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float


def environment_notes(environ: Mapping[str, str]) -> list[str]:
    """Settings of this process's environment that bias the timings, in words."""
    notes = []
    if environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        # Measured side by side (benchmarks/RESULTS.md): ResNet20 batch-1 p50 in ncnn 8-11 ms
        # with it, 0.8-2 ms without; eager 1.7-2.7x slower. ONNX Runtime, XNNPACK and OpenVINO
        # have their own thread pools.
        notes.append("OMP_WAIT_POLICY=PASSIVE is set: OpenMP threads (PyTorch eager and "
                     "TorchScript, ncnn) sleep between calls and wake up slowly, so those rows "
                     "time several times slower than they run; unset it to compare runtimes")
    return notes


def summarize(durations_ns: Sequence[int], batch_size: int) -> LatencyStats:
    """Percentiles (numpy linear interpolation) and throughput of per-call durations in ns."""
    if len(durations_ns) == 0:
        raise ValueError("no timed calls to summarize")
    ms = np.asarray(durations_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method="linear")
    total_s = float(ms.sum()) / 1e3
    throughput = batch_size * len(ms) / total_s if total_s > 0 else float("inf")
    return LatencyStats(batch_size=batch_size, calls=len(ms), p50_ms=float(p50),
                        p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(ms.mean()),
                        throughput_ips=float(throughput))


def time_calls(
    run: Callable[[np.ndarray], object],
    x: np.ndarray,
    *,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float | None = None,
    min_time_s: float = 0.0,
    clock: Callable[[], int] = time.perf_counter_ns,
    sync: Callable[[], None] | None = None,
) -> list[int]:
    """Durations in ns of calls `run(x)` after `warmup` untimed ones: at least `iters` calls
    lasting at least `min_time_s` in total, unless `budget_s` of timed calls is spent first.

    `sync` (e.g. `torch.cuda.synchronize`) runs before the start and before the stop reading, so
    an asynchronous runtime is charged for its whole work and not for the previous call's.
    """
    if iters < 1 or warmup < 0 or min_time_s < 0:
        raise ValueError(f"need iters >= 1, warmup >= 0 and min_time_s >= 0, got iters={iters}, "
                         f"warmup={warmup}, min_time_s={min_time_s}")
    wait = sync or _no_sync
    for _ in range(warmup):
        run(x)
    wait()
    budget_ns = None if budget_s is None else int(budget_s * 1e9)
    min_ns = int(min_time_s * 1e9)
    durations: list[int] = []
    spent = 0
    while len(durations) < iters or spent < min_ns:
        start = clock()
        run(x)
        wait()
        durations.append(clock() - start)
        spent += durations[-1]
        if budget_ns is not None and spent >= budget_ns and len(durations) >= MIN_TIMED_CALLS:
            break
    return durations


def measure(
    run: Callable[[np.ndarray], object],
    input_shape: Sequence[int],
    batch_size: int,
    **timing: object,
) -> LatencyStats:
    """The protocol end to end for one batch size: build the input once, time, summarize."""
    x = random_input(batch_size, input_shape)
    return summarize(time_calls(run, x, **timing), batch_size)  # type: ignore[arg-type]


def random_input(batch_size: int, input_shape: Sequence[int], seed: int = INPUT_SEED) -> np.ndarray:
    """A contiguous float32 batch `[B, *input_shape]`, uniform in [0, 1), the same everywhere."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.random((batch_size, *input_shape), dtype=np.float32))


def _no_sync() -> None:
    """Synchronous runtimes (CPU) have finished when `run` returns."""
