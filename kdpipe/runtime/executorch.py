"""ExecuTorch (`.pte`, lowered to XNNPACK by `kdpipe export`) through `executorch.runtime`."""

from __future__ import annotations

import numpy as np

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization


class ExecuTorchSession:
    """The program's `forward` method; inputs go in as CPU tensors sharing the numpy memory."""

    def __init__(self, method) -> None:
        self.method = method

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute((torch.from_numpy(x),))[0].numpy()


def set_threads(threads: int) -> None:
    """Size XNNPACK's thread pool: ExecuTorch exposes it only through this pybinding."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


@RUNTIMES.register("executorch")
class ExecuTorch(Runtime):
    name = "executorch"
    formats = ("executorch",)
    package = "executorch"
    install_hint = "pip install 'kdpipe[executorch]'"
    remote_backend = "executorch"

    def load(self, artifact: Artifact, threads: int) -> Session:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental API" warnings on every import
            from executorch.runtime import Runtime as EtRuntime

            set_threads(threads)
            program = EtRuntime.get().load_program(artifact.path)
        return with_normalization(ExecuTorchSession(program.load_method("forward")), artifact)
