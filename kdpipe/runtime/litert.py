"""LiteRT (TensorFlow Lite) `.tflite` files through `ai_edge_litert`'s Interpreter on XNNPACK.

The Interpreter applies the XNNPACK delegate by default (fp32, weight-only fp16 and int8
operators) with `num_threads` threads, as an Android app's `Interpreter.Options().setNumThreads`
does. `kdpipe export` writes one file per batch size (its input shape is static), so the session
runs other batch sizes in chunks of the file's own size: `resize_tensor_input` accepts a new
batch on such a file and then computes garbage, because the batch is baked into its reshapes. An
int8 file (ai-edge-quantizer's static recipe) has int8 input and output tensors, each with a scale
and zero point: the session quantizes the float input, `round(x / scale) + zero_point`, and
dequantizes the logits, `(q - zero_point) * scale`, so every file is called alike.
"""

from __future__ import annotations

from collections.abc import Callable

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
        self.quantize = _quantizer(inp)
        self.dequantize = _dequantizer(out)

    def run(self, x: np.ndarray) -> np.ndarray:
        if len(x) == self.batch:
            return self._invoke(x)
        return run_in_chunks(self._invoke, x, self.batch)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self.quantize(x))
        self.interpreter.invoke()
        # get_tensor copies, so the result is safe past the next call
        return self.dequantize(self.interpreter.get_tensor(self.output_index))


def _quantizer(tensor: dict) -> Callable[[np.ndarray], np.ndarray]:
    """float32 -> the tensor's own dtype: identity for a float input, else its affine map."""
    dtype = np.dtype(tensor["dtype"])
    if dtype == np.float32:
        return lambda x: x
    scale, zero_point = tensor["quantization"]
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    return lambda x: np.clip(np.rint(x / np.float32(scale)) + zero_point, low, high).astype(dtype)


def _dequantizer(tensor: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The tensor's dtype -> float32 logits."""
    if np.dtype(tensor["dtype"]) == np.float32:
        return lambda y: y
    scale, zero_point = tensor["quantization"]
    return lambda y: (y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


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
