"""MobileNetV2 (Sandler et al. 2018, https://arxiv.org/abs/1801.04381) adapted to 32x32 inputs.

torchvision's implementation with two changes for CIFAR, as in the common CIFAR ports: the stem
convolution has stride 1 instead of 2, and the 24-channel bottlenecks (table 2, second row) have
stride 1 instead of 2. The network then downsamples 8x, not 32x, so a 32x32 image ends at 4x4
instead of 1x1. Weights are initialized as torchvision does.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any, ClassVar

import torch
from torch import nn

from kdpipe.models.registry import MODELS

# Rows [t expansion, c channels, n repeats, s stride of the first] of Sandler et al., table 2.
CIFAR_SETTING: list[list[int]] = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # ImageNet: stride 2
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _stage_ends(setting: list[list[int]]) -> list[int]:
    """Indices in `features` of the last module at each resolution (0 is the stem conv).

    A stage ends just before a stride-2 bottleneck; the last one ends with the final 1x1 conv.
    """
    ends, index = [], 0
    for _t, _c, n, s in setting:
        if s == 2:
            ends.append(index)
        index += n
    return [*ends, index + 1]


@cache
def _cifar_mobilenet_class() -> type[nn.Module]:
    """`CifarMobileNetV2`, defined on first use: torchvision (and the torch._dynamo it imports,
    about 3 s) loads only when a MobileNetV2 is built, not for `kdpipe --help` or a ResNet run."""
    from torchvision.models import MobileNetV2

    class CifarMobileNetV2(MobileNetV2):
        """torchvision's MobileNetV2 with the CIFAR strides; `forward` returns logits only."""

        feature_layers: ClassVar[dict[str, str]] = {
            **{f"stage{k}": f"features.{i}"
               for k, i in enumerate(_stage_ends(CIFAR_SETTING), 1)},
            "embedding": "flatten",
        }

        def __init__(self, num_classes: int = 10, width_mult: float = 1.0,
                     dropout: float = 0.2) -> None:
            super().__init__(num_classes=num_classes, width_mult=width_mult,
                             inverted_residual_setting=CIFAR_SETTING, dropout=dropout)
            self.features[0][0].stride = (1, 1)  # the stem conv: keep 32x32
            # torchvision pools functionally; parameter-free modules make the embedding tappable.
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            return self.classifier(self.flatten(self.avgpool(x)))

    # A module-level name, so pickle and TorchScript find the class as if defined at top level.
    CifarMobileNetV2.__qualname__ = "CifarMobileNetV2"
    CifarMobileNetV2.__module__ = __name__
    globals()["CifarMobileNetV2"] = CifarMobileNetV2
    return CifarMobileNetV2


def __getattr__(name: str) -> Any:
    """`CifarMobileNetV2` resolves (and imports torchvision) on first use."""
    if name == "CifarMobileNetV2":
        return _cifar_mobilenet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2
                 ) -> nn.Module:
    """The shared builder; `width_mult` scales every layer but the last 1x1 conv (1280)."""
    return _cifar_mobilenet_class()(num_classes=num_classes, width_mult=width_mult,
                                    dropout=dropout)


mobilenetv2 = MODELS.register("mobilenetv2")(_mobilenetv2)
mobilenetv2_x0_5 = MODELS.register("mobilenetv2_x0_5")(partial(_mobilenetv2, width_mult=0.5))
