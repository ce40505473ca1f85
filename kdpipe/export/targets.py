"""Importing this module registers every export target: each module adds its own entry.

A new target is one module with one `@register_target` class, plus its line here.
"""

from kdpipe.export import (  # noqa: F401  (each module registers its target)
    coreml,
    executorch,
    litert,
    ncnn,
    onnx,
    openvino,
    ort,
    torchscript,
)
from kdpipe.export.base import TARGETS

__all__ = ["TARGETS"]
