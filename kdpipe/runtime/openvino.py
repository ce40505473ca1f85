"""OpenVINO IR (`.xml` + its `.bin` weights) on OpenVINO's CPU plugin.

Compiled for latency with one stream and `threads` inference threads. The precision hint is
pinned to f32: on CPUs with bf16 (AVX-512 BF16, AMX) the plugin otherwise runs float layers in
bf16 by default, which moved 0.6% of a ResNet20's top-1s; an int8 IR's quantized layers stay int8
either way. A static-batch IR (exported for batch 1 only) runs other batch sizes in chunks.
"""

from __future__ import annotations

import numpy as np

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization
from kdpipe.runtime.chunks import run_in_chunks


def compile_config(threads: int) -> dict[str, object]:
    """What every OpenVINO load uses: fixed threads, one stream, float32 arithmetic."""
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoSession:
    """One infer request of a compiled model; `run` feeds the first input."""

    def __init__(self, compiled) -> None:  # openvino.CompiledModel
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        batch = compiled.input(0).partial_shape[0]
        self.batch = batch.get_length() if batch.is_static else None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.batch is not None and len(x) != self.batch:
            return run_in_chunks(self._infer, x, self.batch)
        return self._infer(x)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.output]  # copied out (share_outputs=False)


@RUNTIMES.register("openvino")
class OpenVino(Runtime):
    name = "openvino"
    formats = ("openvino",)
    package = "openvino"
    install_hint = "pip install 'kdpipe[openvino]'"

    def load(self, artifact: Artifact, threads: int) -> Session:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(artifact.path)), "CPU",
                                      compile_config(threads))
        return with_normalization(OpenVinoSession(compiled), artifact)
