"""ncnn (`.param` graph + `.bin` weights, converted by pnnx) through the ncnn Python binding.

ncnn's extractor takes one CHW image per call, so the session loops over the batch: a batch of 32
costs 32 calls, as in an app. fp32 files run with every reduced-precision option off (ncnn's
defaults store and compute in fp16/bf16 where the CPU has them), so they compute what PyTorch
does; fp16-weight files keep ncnn's defaults, which is how an app would run them.
"""

from __future__ import annotations

import numpy as np

from kdpipe.export.metadata import companion_files
from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.base import RUNTIMES, Runtime, Session, with_normalization


class NcnnSession:
    """A loaded `ncnn.Net`; `run` extracts the output of each image in turn."""

    def __init__(self, net, input_name: str, output_name: str) -> None:  # ncnn.Net
        self.net = net
        self.input_name, self.output_name = input_name, output_name

    def run(self, x: np.ndarray) -> np.ndarray:
        import ncnn

        outputs = []
        for image in x:
            extractor = self.net.create_extractor()
            extractor.input(self.input_name, ncnn.Mat(np.ascontiguousarray(image)))
            status, out = extractor.extract(self.output_name)
            if status != 0:
                raise RuntimeError(f"ncnn extract({self.output_name!r}) returned {status}")
            outputs.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(outputs)


@RUNTIMES.register("ncnn")
class Ncnn(Runtime):
    name = "ncnn"
    formats = ("ncnn",)
    package = "ncnn"
    install_hint = "pip install 'kdpipe[ncnn]'"
    note = ("ncnn runs one image per call: its batch-N rows are N sequential calls, timed "
            "together")

    def load(self, artifact: Artifact, threads: int) -> Session:
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = threads
        if artifact.quantization == "fp32":
            net.opt.use_fp16_storage = False
            net.opt.use_fp16_packed = False
            net.opt.use_fp16_arithmetic = False
            net.opt.use_bf16_storage = False
        (weights,) = companion_files(artifact.path)
        for status, what in ((net.load_param(str(artifact.path)), artifact.path),
                             (net.load_model(str(weights)), weights)):
            if status != 0:
                raise RuntimeError(f"ncnn cannot load {what} (status {status})")
        meta = artifact.metadata
        session = NcnnSession(net, meta.get("input_name") or "in0",
                              meta.get("output_name") or "out0")
        return with_normalization(session, artifact)
