"""PyTorch eager: kdpipe checkpoints and pytorch_resnet_cifar10 files, the baseline of every bench.

Fair by construction: `eval()`, `torch.inference_mode()`, the same thread count as every other
runtime, and the checkpoint's normalization applied inside the session so it takes [0, 1] input
like the exported files (which fold it in).
"""

from __future__ import annotations

import numpy as np

from kdpipe.runtime.artifact import CHECKPOINT, Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session


class TorchSession:
    """Runs a module on CPU tensors that share memory with the numpy input (no copy)."""

    def __init__(self, module, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
        import torch

        self.module = module
        self.mean = None if mean is None else torch.tensor(mean).reshape(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).reshape(1, -1, 1, 1)

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.mean is not None:
                t = (t - self.mean) / self.std
            return self.module(t).float().numpy()


@RUNTIMES.register("eager")
class Eager(Runtime):
    name = "eager"
    formats = (CHECKPOINT,)
    package = "torch"
    install_hint = "pip install torch"

    def load(self, artifact: Artifact, threads: int) -> Session:
        import torch

        from kdpipe.models import load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(artifact.path).eval()
        return TorchSession(model, artifact.mean, artifact.std)
