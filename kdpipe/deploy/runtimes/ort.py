"""ONNX Runtime on its CPU execution provider (`.onnx` and ORT-format `.ort`, float or QDQ INT8)."""

from __future__ import annotations

import numpy as np

from kdpipe.deploy.artifact import Artifact
from kdpipe.deploy.runtimes.base import RUNTIMES, Runtime, Session, with_normalization
from kdpipe.deploy.snippets import kotlin_snippet, python_snippet, react_native_snippet


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

    def snippet(self, artifact: Artifact) -> str:
        return python_snippet(artifact, ["import onnxruntime as ort"], (
            f'session = ort.InferenceSession("{artifact.name}", '
            'providers=["CPUExecutionProvider"])\n'
            "logits = session.run(None, {session.get_inputs()[0].name: x})[0]"))

    def app_snippets(self, artifact: Artifact) -> dict[str, str]:
        """ORT format is what ONNX Runtime Mobile and React Native load: Android and RN examples."""
        if artifact.format != "ort":
            return {}
        return {"Classifier.kt": kotlin_snippet(artifact),
                "classify.ts": react_native_snippet(artifact)}
