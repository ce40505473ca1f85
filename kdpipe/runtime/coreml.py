"""Core ML (`.mlpackage`) through coremltools' `MLModel.predict`, which exists only on macOS."""

from __future__ import annotations

import sys

import numpy as np

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization


class CoreMLSession:
    """`MLModel.predict` on the model's input; returns scores [B, K] in class order.

    A Core ML classifier (metadata `output_kind: probabilities`) returns a dict keyed by class
    name; it is laid out in the metadata's class order, so argmax and top-1 work as for logits.
    """

    def __init__(self, model, artifact: Artifact) -> None:
        description = model.get_spec().description
        meta = artifact.metadata
        self.model = model
        self.input_name = meta.get("input_name") or description.input[0].name
        self.output_name = meta.get("output_name") or description.output[0].name
        self.classes = list(artifact.classes)

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict({self.input_name: x})[self.output_name]
        if isinstance(out, dict):
            return np.asarray([[out[c] for c in self.classes]], dtype=np.float32)
        return np.asarray(out, dtype=np.float32)


@RUNTIMES.register("coreml")
class CoreML(Runtime):
    name = "coreml"
    formats = ("coreml",)
    package = "coremltools"
    install_hint = "pip install 'kdpipe[coreml]'"
    note = ("Core ML picks its compute units itself (ComputeUnit.ALL: CPU, GPU, Neural Engine); "
            "it has no thread-count setting")

    def available(self) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, (f"Core ML runs only on macOS (this is {sys.platform}); conversion works "
                           "anywhere, prediction needs a Mac")
        return super().available()

    def load(self, artifact: Artifact, threads: int) -> Session:
        import coremltools as ct

        model = ct.models.MLModel(str(artifact.path), compute_units=ct.ComputeUnit.ALL)
        return with_normalization(CoreMLSession(model, artifact), artifact)
