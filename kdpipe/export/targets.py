"""Importing this module registers every export target: each module adds its own entry.

A new target is one module with one `@register_target` class, plus its line here.
"""

from kdpipe.export import coreml, executorch, onnx, ort, torchscript  # noqa: F401  (registers them)
from kdpipe.export.base import TARGETS

__all__ = ["TARGETS"]
