"""VGG-style plain CNNs (no shortcuts) standing for the KD survey's "novel" teacher and student.

The survey leaves these unspecified; following Simonyan & Zisserman 2015 ("Very Deep
Convolutional Networks", https://arxiv.org/abs/1409.1556) they are stacks of 3x3 conv-BN-ReLU
layers, two per stage, max-pool between stages, then global average pooling and a linear head.
The stages end at 32x32, 16x16 and 8x8 like the CIFAR ResNets' stages, so a hint from one family
matches the other's spatial size. The student is the teacher at a quarter of the width.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import torch
from torch import nn

from kdpipe.models.registry import MODELS


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias: BN follows), BN, ReLU; not in place, so a tap on BN stays intact."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class PlainCNN(nn.Module):
    """Three stages of two conv-BN-ReLU layers of `widths[k]` channels; `forward` gives logits."""

    feature_layers: ClassVar[dict[str, str]] = {
        "stage1": "stage1",
        "stage2": "stage2",
        "stage3": "stage3",
        "embedding": "flatten",
    }

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.stage1 = nn.Sequential(conv_bn_relu(3, c1), conv_bn_relu(c1, c1))
        # Downsampling opens a stage (like a stride-2 first block), so stage outputs keep the
        # full resolution of their stage.
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c1, c2), conv_bn_relu(c2, c2))
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c2, c3), conv_bn_relu(c3, c3))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(c3, num_classes)
        self.apply(_kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(x)))
        return self.linear(self.flatten(self.avgpool(out)))


def _kaiming_init(module: nn.Module) -> None:
    """He et al. 2015 normal init of conv and linear weights, the same as the CIFAR ResNets."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def _plain_cnn(widths: tuple[int, int, int], num_classes: int = 10) -> PlainCNN:
    """The shared builder over the three stage widths."""
    return PlainCNN(widths, num_classes=num_classes)


# 1,148,874 parameters and 152.8M MACs at 32x32 (the "~1M" teacher).
plaincnn_teacher = MODELS.register("plaincnn_teacher")(partial(_plain_cnn, (64, 128, 256)))
# 72,954 parameters and 9.9M MACs (the "<= 0.1M" student).
plaincnn_student = MODELS.register("plaincnn_student")(partial(_plain_cnn, (16, 32, 64)))
