"""TorchScript (`.pt`, traced and frozen by `kdpipe export`) on the PyTorch JIT runtime, CPU."""

from __future__ import annotations

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session
from kdpipe.runtime.eager import TorchSession


@RUNTIMES.register("torchscript")
class TorchScript(Runtime):
    name = "torchscript"
    formats = ("torchscript",)
    package = "torch"
    install_hint = "pip install torch"

    def load(self, artifact: Artifact, threads: int) -> Session:
        import warnings

        import torch

        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "TorchScript is deprecated"
            module = torch.jit.load(str(artifact.path), map_location="cpu").eval()
        return TorchSession(module, artifact.mean, artifact.std)
