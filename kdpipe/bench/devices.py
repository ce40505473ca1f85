"""Where a bench runs: this machine (`local`) or a device reached over `ssh://`.

A device turns (artifact, runtime, plan) into a `RunOutcome`; `bench.py` turns outcomes into
report rows, so both kinds of device fill the same report. Devices are chosen by the scheme of
`--device` through the `DEVICES` registry.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from kdpipe import quiet
from kdpipe.errors import KdpipeError
from kdpipe.registry import Registry
from kdpipe.runtime import Runtime
from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.chunks import top1
from kdpipe.runtime.latency import LatencyStats, measure


@dataclass(frozen=True)
class LabelledImages:
    """The labelled images behind `top1`: uint8 [N, C, H, W] and int64 [N]."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Plan:
    """The settings every runtime of one bench shares (the fairness of the comparison)."""

    threads: int
    batch_sizes: tuple[int, ...]
    warmup: int
    iters: int
    time_budget_s: float | None
    min_time_s: float
    memory: bool
    images: LabelledImages | None
    imports: tuple[str, ...] = ()  # the user's modules (`--import`) the memory subprocess needs


@dataclass
class RunOutcome:
    """What one runtime did with one artifact: accuracy, latency per batch size, memory."""

    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    top1: float | None = None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    skipped_batches: dict[int, str] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)


class Device(Protocol):
    """What `run_bench` needs of a device; `label` names it in the report."""

    label: str

    def __enter__(self) -> Device: ...

    def __exit__(self, *exc: object) -> None: ...

    def machine(self, threads: int) -> dict[str, Any]: ...

    def runtime_label(self, runtime: Runtime) -> str: ...

    def runs(self, runtime: Runtime) -> bool: ...

    def versions(self, runtimes: list[Runtime]) -> dict[str, str | None]: ...

    def prepare(self, work: list[tuple[Artifact, Runtime]]) -> None: ...

    def run(self, artifact: Artifact, runtime: Runtime, plan: Plan) -> RunOutcome: ...


DEVICES: Registry[Any] = Registry("device")


def open_device(spec: str, options: dict[str, Any]) -> Device:
    """The device of a `--device` value: `local`, or `SCHEME://...` by its scheme."""
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    if scheme not in DEVICES:
        raise KdpipeError(f"unknown device {spec!r}: use local or ssh://user@host[:port]")
    return DEVICES.get(scheme)(spec, **options)


def runnable_batches(artifact: Artifact, batch_sizes: tuple[int, ...]) -> tuple[list[int], dict]:
    """The batch sizes this artifact runs, and a reason for each it cannot."""
    ok = [b for b in batch_sizes if artifact.runs_batch(b)]
    if artifact.batch_sizes is not None:
        why = (f"{artifact.name} was exported for batch sizes {list(artifact.batch_sizes)} only; "
               "export one artifact per batch size")
    else:
        why = f"{artifact.name} runs batches of at most {artifact.max_batch_size}"
    return ok, {b: why for b in batch_sizes if b not in ok}


@DEVICES.register("local")
class LocalDevice:
    """This machine: sessions run in-process, peak memory in a fresh subprocess each."""

    label = "local"

    def __init__(self, spec: str = "local", **_: Any) -> None:
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> LocalDevice:
        self._scratch = tempfile.TemporaryDirectory(prefix="kdpipe-bench-")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    def machine(self, threads: int) -> dict[str, Any]:
        from kdpipe.runinfo import environment

        return {**environment(), "threads": threads}

    def runtime_label(self, runtime: Runtime) -> str:
        return runtime.name

    def runs(self, runtime: Runtime) -> bool:
        return True

    def versions(self, runtimes: list[Runtime]) -> dict[str, str | None]:
        return {r.name: r.version() for r in runtimes}

    def prepare(self, work: list[tuple[Artifact, Runtime]]) -> None:
        """Nothing to set up here: availability is decided per runtime, as skipped rows."""

    def run(self, artifact: Artifact, runtime: Runtime, plan: Plan) -> RunOutcome:
        available, why = runtime.available_for(artifact)
        if not available:
            return RunOutcome(status="skipped", reason=why)
        with quiet.native_stderr():  # a runtime's C++ notices as it loads (kdpipe.quiet)
            outcome = self._time(artifact, runtime, plan)
        if outcome.status == "ok" and plan.memory:
            self._memory(artifact, runtime, plan, outcome)
        return outcome

    def _time(self, artifact: Artifact, runtime: Runtime, plan: Plan) -> RunOutcome:
        batches, skipped = runnable_batches(artifact, plan.batch_sizes)
        outcome = RunOutcome(skipped_batches=skipped)
        session = None
        try:
            session = runtime.load(artifact, plan.threads)
            if plan.images is not None:
                outcome.top1 = top1(session.run, artifact, plan.images.images,
                                    plan.images.labels)
            for b in batches:
                outcome.latency[b] = measure(session.run, artifact.input_shape, b,
                                             warmup=plan.warmup, iters=plan.iters,
                                             budget_s=plan.time_budget_s,
                                             min_time_s=plan.min_time_s,
                                             sync=getattr(session, "sync", None))
        except KdpipeError as e:
            return RunOutcome(status="failed", reason=str(e))
        except Exception as e:  # noqa: BLE001 - one broken runtime must not lose the others' rows
            return RunOutcome(status="failed", reason=f"{type(e).__name__}: {e}".strip())
        finally:
            del session  # free the runtime's memory and threads before the next one is timed
            gc.collect()
        return outcome

    def _memory(self, artifact: Artifact, runtime: Runtime, plan: Plan,
                outcome: RunOutcome) -> None:
        from kdpipe.bench.measure_memory import measure_in_subprocess

        assert self._scratch is not None, "use LocalDevice as a context manager"
        batches = sorted(outcome.latency) or [1]
        try:
            outcome.peak_rss_mb = measure_in_subprocess(artifact, runtime.name, plan.threads,
                                                        batches, Path(self._scratch.name),
                                                        imports=plan.imports)
        except KdpipeError as e:
            hint = ("; pass the module that registers it with --import MODULE"
                    if "unknown model" in str(e) and not plan.imports else "")
            outcome.reason = f"peak RSS not measured: {e}{hint}"
