"""The frozen teacher: frozen in exactly one place (`freeze_teacher`), run in exactly one way.

The teacher forward runs under `torch.no_grad()` (not `inference_mode`: inference tensors cannot
be saved for the student's backward, and losses such as MSE against a teacher feature save them)
and under bf16 autocast where the run trains in bf16 (`kdpipe.train.precision`). Its outputs come
back in float32. The loader normalizes images for the student; when the teacher was trained with
another mean/std, the batch is re-normalized for it on the fly (an affine map per channel), so any
kdpipe or zoo checkpoint can teach.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import FeatureTaps, feature_layers
from kdpipe.train.methods.base import Outputs
from kdpipe.train.methods.cache import TeacherCache
from kdpipe.train.precision import uses_bf16


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Eval mode (BN running statistics, no dropout) and no gradients, for good."""
    model.eval()
    model.requires_grad_(False)
    return model


class Teacher:
    """A frozen teacher with all its declared feature taps attached once.

    Deliberately not an `nn.Module`: an objective holding it does not register it, so the teacher
    stays out of `state_dict()` (the checkpoint), `parameters()` (the optimizer) and `train()`.
    """

    def __init__(self, model: nn.Module, *, name: str, mean: Sequence[float],
                 std: Sequence[float], data_mean: Sequence[float], data_std: Sequence[float],
                 amp: bool = True, cache: TeacherCache | None = None) -> None:
        self.model = freeze_teacher(model)
        self.name = name
        self.amp = amp
        self.cache = cache
        # x_teacher = (x * data_std + data_mean - mean) / std = x * scale + shift, per channel.
        self.scale = [ds / s for ds, s in zip(data_std, std, strict=True)]
        self.shift = [(dm - m) / s for dm, m, s in zip(data_mean, mean, std, strict=True)]
        self.renormalize = any(v != 1.0 for v in self.scale) or any(v != 0.0 for v in self.shift)
        layers = feature_layers(model)
        # Hooks attached once for the teacher's lifetime (re-adding them per step would make
        # torch.compile recompile); the tensors they hold are released after every call.
        self.taps = FeatureTaps(model, layers).attach() if layers else None

    def tap_names(self) -> list[str]:
        return self.taps.names if self.taps is not None else []

    def require(self, taps: Sequence[str]) -> None:
        """A clear error, when an objective is built, for taps this teacher does not declare."""
        missing = [t for t in taps if t not in self.tap_names()]
        if missing:
            raise KdpipeError(
                f"teacher {self.name} declares no feature taps {missing} "
                f"(it has {self.tap_names() or 'none'})"
            )

    def __call__(self, images: torch.Tensor, taps: Sequence[str] = (), *,
                 use_cache: bool = True) -> Outputs:
        """Logits and the requested taps for a batch normalized for the student (float32)."""
        if not use_cache or self.cache is None:
            return self._forward(images, taps)
        key = self.cache.key(images)
        out = self.cache.load(key, taps, images.device)
        if out is None:
            # Every tap runs anyway (the hooks are attached), so the cache keeps all the vector
            # ones: a later cell of another method (RKD's embedding after KD's logits) then hits.
            out = self._forward(images, self.tap_names())
            self.cache.save(key, out)
            out = Outputs(out.logits, {t: out.features[t] for t in taps})
        return out

    def _forward(self, images: torch.Tensor, taps: Sequence[str]) -> Outputs:
        if self.renormalize:
            scale = images.new_tensor(self.scale).view(1, -1, 1, 1)
            shift = images.new_tensor(self.shift).view(1, -1, 1, 1)
            images = images * scale + shift
        device = images.device.type
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16,
                                             enabled=uses_bf16(self.amp, images.device)):
            if self.taps is None:
                logits, features = self.model(images), {}
            else:
                logits, features = self.taps(images)
        return Outputs(logits.float(), {t: features[t].float() for t in taps})
