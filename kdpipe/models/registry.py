"""The model registry: `@MODELS.register()` adds a factory, `create(name)` is the one way to build.

Like timm's `create_model`: a factory takes `num_classes` plus its own keyword arguments and
returns an `nn.Module`; a wrong name or keyword is a `KdpipeError`, not a `TypeError` traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def create(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with `num_classes` outputs (in training mode)."""
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KdpipeError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        inspect.signature(factory).bind(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise KdpipeError(
            f"model {name!r} does not accept the arguments {sorted(kwargs)}: {e}; "
            f"it takes {_parameters(factory)}"
        ) from None
    return factory(num_classes=num_classes, **kwargs)


def available() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def _parameters(factory: ModelFactory) -> str:
    params = inspect.signature(factory).parameters.values()
    return ", ".join(p.name for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty)
