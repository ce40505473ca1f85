"""LiteRT (TensorFlow Lite) `.tflite` files through `ai_edge_litert`'s Interpreter on XNNPACK.

The Interpreter applies the XNNPACK delegate by default (fp32, weight-only fp16 and int8
operators) with `num_threads` threads, as an Android app's `Interpreter.Options().setNumThreads`
does. `kdpipe export` writes one file per batch size (its input shape is static), so the session
runs other batch sizes in chunks of the file's own size: `resize_tensor_input` accepts a new
batch on such a file and then computes garbage, because the batch is baked into its reshapes. An
int8 file takes float32 input but returns its logits as int8 with a scale and zero point
(litert-torch's PT2E lowering quantizes the last layer's output): the session dequantizes them,
`(q - zero_point) * scale`.
"""

from __future__ import annotations

import numpy as np

from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization
from kdpipe.runtime.chunks import run_in_chunks


class LiteRtSession:
    """One allocated Interpreter: `run` sets the input tensor, invokes, and copies the output."""

    def __init__(self, interpreter) -> None:  # ai_edge_litert.interpreter.Interpreter
        interpreter.allocate_tensors()
        self.interpreter = interpreter
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.batch = int(inp["shape"][0])
        scale, zero_point = out["quantization"]
        quantized = np.dtype(out["dtype"]) != np.float32
        self.scale, self.zero_point = (np.float32(scale), zero_point) if quantized else (None, 0)

    def run(self, x: np.ndarray) -> np.ndarray:
        if len(x) == self.batch:
            return self._invoke(x)
        return run_in_chunks(self._invoke, x, self.batch)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output_index)  # a copy, safe past the next call
        if self.scale is None:
            return out
        return (out.astype(np.float32) - np.float32(self.zero_point)) * self.scale


@RUNTIMES.register("litert")
class LiteRt(Runtime):
    name = "litert"
    formats = ("litert",)
    package = "ai-edge-litert"
    install_hint = "pip install 'kdpipe[litert]'"
    remote_backend = "litert"

    def load(self, artifact: Artifact, threads: int) -> Session:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(artifact.path), num_threads=threads)
        return with_normalization(LiteRtSession(interpreter), artifact)
