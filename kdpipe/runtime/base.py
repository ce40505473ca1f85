"""The runtime interface: which formats a runtime runs, whether it can run here, and a session.

A runtime is one small class registered in `RUNTIMES` with one decorator line. Its heavy package
(onnxruntime, executorch, coremltools, tensorrt...) is imported inside `load`/`version` only, so
`import kdpipe.runtime` stays cheap and works where optional packages are missing.
"""

from __future__ import annotations

import abc
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from kdpipe.registry import Registry
from kdpipe.runtime.artifact import Artifact


class Session(Protocol):
    """A loaded model. `run` takes float32 RGB in [0, 1], NCHW, and returns float32 logits [B, K].

    A session of an asynchronous runtime (CUDA) also has `sync()`, called by the latency protocol
    before it reads the clock.
    """

    def run(self, x: np.ndarray) -> np.ndarray: ...


class Runtime(abc.ABC):
    """Base of every runtime; subclasses set the class attributes and implement `load`."""

    name: str = ""
    formats: tuple[str, ...] = ()  # artifact formats (metadata `format`) this runtime runs
    package: str = ""  # the distribution whose version the report records
    install_hint: str = ""  # what to do when `available()` is false
    remote_backend: str | None = None  # backend of remote_runner.py that runs it over ssh://
    auto: bool = True  # benched by default for its formats; False: only when named (--runtimes)
    note: str = ""  # a caveat the report prints when this runtime ran (e.g. no thread setting)

    def runs(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def available(self) -> tuple[bool, str]:
        """(True, "") when it can run on this machine, else (False, why and how to fix it)."""
        if self.package and importlib.util.find_spec(self.package.replace("-", "_")) is None:
            return False, f"{self.package} is not installed: {self.install_hint}"
        return True, ""

    def available_for(self, artifact: Artifact) -> tuple[bool, str]:
        """Like `available()`, for runtimes whose requirements depend on the artifact's format."""
        return self.available()

    def version(self) -> str | None:
        """Version of the package doing the work, for the report (None when not installed)."""
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    @abc.abstractmethod
    def load(self, artifact: Artifact, threads: int) -> Session:
        """Load `artifact` for inference with `threads` CPU threads."""

    def simulated(self, artifact: Artifact, threads: int,
                  source: Path | None = None) -> Session | None:
        """The artifact (or its `source` file) with its quantization computed in float exactly
        as the file specifies, where this runtime can (None elsewhere): the parity check's
        reference for the integer kernels that `load` runs."""
        return None



RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def runtime(name: str) -> Runtime:
    """The registered runtime `name` (a `KdpipeError` lists the known ones)."""
    return RUNTIMES.get(name)()


def runtimes_for(artifact: Artifact, names: list[str] | None = None) -> list[Runtime]:
    """The runtimes that run this artifact's format, in name order: those in `names` when given,
    else every one that is benched by default (`auto`)."""
    chosen = [runtime(n) for n in names] if names else [runtime(n) for n in RUNTIMES.names()]
    return [r for r in chosen if r.runs(artifact) and (names or r.auto)]


class NormalizingSession:
    """Wraps a session of a file that expects normalized input, so its callers still pass [0, 1].

    Used only for artifacts exported without folded normalization; the division is part of the
    timed call, as it would be in an app.
    """

    def __init__(self, inner: Session, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.inner = inner
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run((x - self.mean) / self.std)


def with_normalization(session: Session, artifact: Artifact) -> Session:
    """`session` itself for folded artifacts, else wrapped to normalize inside."""
    if artifact.mean is None or artifact.std is None:
        return session
    return NormalizingSession(session, artifact.mean, artifact.std)


def default_threads() -> int:
    """The CPUs this process may use (the affinity mask, which containers narrow), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
