"""Named intermediate features through forward hooks, leaving `forward` (and export) alone.

Each kdpipe model declares `feature_layers`, a class attribute mapping a tap name (`stage1`,
..., `embedding`) to a submodule path; `FeatureTaps` hooks any module path of any model, so a
user's own network can be distilled from by naming its layers. Feature-based distillation
(FitNets, Romero et al. 2015, https://arxiv.org/abs/1412.6550; attention transfer, RKD, ...)
reads its inputs here instead of changing the models' outputs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdpipe.errors import KdpipeError

_STAGE = re.compile(r"stage\d+")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the layers: inside DistributedDataParallel, DataParallel and
    `torch.compile` wrappers, whose own parameter names carry a prefix."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = inner  # type: ignore[assignment]
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def feature_layers(model: nn.Module) -> dict[str, str]:
    """The taps a model declares (tap name -> module path); `{}` for a model that declares none.

    Read from the instance, so a user's own `nn.Module` can name its layers without subclassing:
    `model.feature_layers = {"stage1": "block1", "stage2": "block2", "embedding": "pool"}`.
    """
    declared = getattr(unwrap_model(model), "feature_layers", None)
    return dict(declared) if isinstance(declared, Mapping) else {}


def stage_names(model: nn.Module) -> list[str]:
    """The declared stage taps in network order, e.g. `["stage1", "stage2", "stage3"]`."""
    return [name for name in feature_layers(model) if _STAGE.fullmatch(name)]


class FeatureTaps:
    """Run a model and collect the outputs of named submodules.

    >>> with FeatureTaps(model, {"stage3": "layer3", "embedding": "flatten"}) as taps:
    ...     logits, feats = taps(images)   # feats["stage3"]: [B, 64, 8, 8]

    Hooks sit on the inner module, so a DDP- or `torch.compile`-wrapped model works: call the
    wrapper and the inner forward fires them. Called outside a `with`, the hooks are added for that
    one call only. Outputs are the modules' own tensors, so gradients flow through them.

    With `torch.compile`, create the taps before the first compiled call and keep that one object
    for the run (a `with` block around the loop): dynamo traces the hooks present at the first
    call (they compile into the graph, fullgraph included) and does not guard on hooks added
    later, so a second FeatureTaps on an already-compiled model would never fire (that is
    reported as an error, not returned as missing features).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, str] | None = None) -> None:
        self.model = model
        inner = unwrap_model(model)
        layers = feature_layers(inner) if layers is None else layers
        if not layers:
            raise KdpipeError(
                f"{type(inner).__name__} declares no feature taps; pass layers as "
                "{tap name: module path}, e.g. {'stage3': 'layer3'}"
            )
        modules = dict(inner.named_modules())
        self._targets = {tap: _resolve(modules, path, tap, inner) for tap, path in layers.items()}
        self._handles: list[RemovableHandle] = []
        self._outputs: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        """The tap names, in the order given."""
        return list(self._targets)

    def attach(self) -> FeatureTaps:
        """Register the hooks (once)."""
        if not self._handles:
            for tap, module in self._targets.items():
                self._handles.append(module.register_forward_hook(self._saver(tap)))
        return self

    def remove(self) -> None:
        """Remove the hooks; the model is as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = {}

    def __enter__(self) -> FeatureTaps:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`model(*args, **kwargs)` and `{tap name: output}` of that call."""
        one_shot = not self._handles
        self.attach()
        self._outputs = {}
        try:
            logits = self.model(*args, **kwargs)
            features = self._outputs
        finally:
            self._outputs = {}  # hold no activations between calls
            if one_shot:
                self.remove()
        missing = [tap for tap in self._targets if tap not in features]
        if missing:
            raise KdpipeError(self._silent_message(missing))
        return logits, {tap: features[tap] for tap in self._targets}

    def _silent_message(self, missing: list[str]) -> str:
        if hasattr(self.model, "_orig_mod"):
            # torch._dynamo.config.skip_nnmodule_hook_guards: hooks added after the first
            # compiled call do not trigger a recompile, so the compiled graph never runs them.
            return (
                f"taps {missing} got no output: torch.compile traced this model before these "
                "hooks existed and does not see hooks added later; create the FeatureTaps before "
                "the first compiled call and keep using that one object (or torch._dynamo.reset())"
            )
        return f"taps {missing} got no output: their modules exist but forward does not call them"

    def _saver(self, tap: str) -> Callable[[nn.Module, Any, Any], None]:
        def save(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._outputs[tap] = output

        return save


def feature_shapes(
    model: nn.Module,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    layers: Mapping[str, str] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Shapes of the tapped features for one zero input of `input_shape` (eval mode, no grad)."""
    inner = unwrap_model(model)
    reference = next(inner.parameters(), torch.empty(0))
    x = torch.zeros(input_shape, device=reference.device, dtype=reference.dtype)
    was_training = inner.training
    inner.eval()  # BN statistics must not move
    try:
        with torch.no_grad():
            _, feats = FeatureTaps(inner, layers)(x)
    finally:
        inner.train(was_training)
    return {tap: tuple(value.shape) for tap, value in feats.items()}


def _resolve(modules: dict[str, nn.Module], path: str, tap: str, model: nn.Module) -> nn.Module:
    """The submodule at `path`, or an error naming close matches and the available names."""
    if path in modules:
        return modules[path]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(path, names, n=5)
    listed = names if len(names) <= 40 else [n for n in names if "." not in n]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    scope = "modules" if len(names) <= 40 else "top-level modules (print model.named_modules())"
    raise KdpipeError(
        f"tap {tap!r}: {type(model).__name__} has no submodule {path!r}{hint}; "
        f"{scope}: {', '.join(listed)}"
    )
