"""ONNX Runtime on its CPU execution provider (`.onnx` and ORT-format `.ort`, float or QDQ INT8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization


class OrtSession:
    """One `InferenceSession`; `run` feeds the first input and returns the first output."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [session.get_outputs()[0].name]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names, {self.input_name: x})[0]


def session_options(threads: int):
    """Intra-op threads fixed like every runtime's; one inter-op thread (the graph is a chain)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnx", "ort")
    package = "onnxruntime"
    install_hint = "pip install onnxruntime"
    remote_backend = "onnxruntime"

    def version(self) -> str | None:
        # GPU and other builds of ONNX Runtime are distributed under other names.
        try:
            import onnxruntime

            return onnxruntime.__version__
        except ImportError:
            return None

    def load(self, artifact: Artifact, threads: int) -> Session:
        import onnxruntime as ort

        session = ort.InferenceSession(str(artifact.path), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return with_normalization(OrtSession(session), artifact)

    def simulated(self, artifact: Artifact, threads: int,
                  source: Path | None = None) -> Session | None:
        """An int8 file with graph optimizations off: ONNX Runtime then runs each QDQ pair as
        DequantizeLinear -> float operator -> QuantizeLinear, exactly what the file specifies,
        instead of fusing them into the integer kernels of this CPU."""
        import onnxruntime as ort

        if artifact.quantization != "int8":
            return None
        options = session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(source or artifact.path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        return with_normalization(OrtSession(session), artifact)
