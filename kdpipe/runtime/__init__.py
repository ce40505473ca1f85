"""The runtime registry: importing this package registers every runtime (none imports its heavy
package until it loads a file). Add one: a module with a `Runtime` subclass under
`@RUNTIMES.register("name")`, imported below."""

from kdpipe.runtime import (  # noqa: F401  (each module registers its runtime)
    coreml,
    eager,
    executorch,
    litert,
    ncnn,
    onnxruntime,
    openvino,
    tensorrt,
    torchscript,
)
from kdpipe.runtime.base import (
    RUNTIMES,
    NormalizingSession,
    Runtime,
    Session,
    runtime,
    runtimes_for,
    with_normalization,
)

__all__ = ["RUNTIMES", "NormalizingSession", "Runtime", "Session", "runtime", "runtimes_for",
           "with_normalization"]
