"""The runtime registry: importing this package registers every runtime (none imports its heavy
package until it loads a file). Add one: a module with a `Runtime` subclass under
`@RUNTIMES.register("name")`, imported below."""

from kdpipe.deploy.runtimes import coreml, eager, executorch, ort, tensorrt, torchscript  # noqa: F401
from kdpipe.deploy.runtimes.base import (
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
