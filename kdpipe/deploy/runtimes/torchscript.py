"""TorchScript (`.pt`, traced and frozen by `kdpipe export`) on the PyTorch JIT runtime, CPU."""

from __future__ import annotations

from kdpipe.deploy.artifact import Artifact
from kdpipe.deploy.runtimes.base import RUNTIMES, Runtime, Session
from kdpipe.deploy.runtimes.eager import TorchSession
from kdpipe.deploy.snippets import python_snippet


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

    def snippet(self, artifact: Artifact) -> str:
        return python_snippet(artifact, ["import torch"], (
            f'model = torch.jit.load("{artifact.name}", map_location="cpu").eval()\n'
            "with torch.inference_mode():\n"
            "    logits = model(torch.from_numpy(x)).numpy()"))
