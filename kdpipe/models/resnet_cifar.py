"""CIFAR ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2.

https://arxiv.org/abs/1512.03385. A 3x3 stem with 16 channels, three stages of n basic blocks
(16/32/64 channels at 32x32/16x16/8x8), "option A" parameter-free shortcuts, global average pool
and a linear head: 6n+2 layers. Module names follow the public pytorch_resnet_cifar10 zoo
(Idelbayev 2018), so its state dicts load key for key (after dropping the `module.` prefix).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.models.registry import MODELS


class ShortcutA(nn.Module):
    """Option A of He et al. 2016: subsample by `stride`, zero-pad the new channels.

    The zoo writes this as a lambda; a module with plain attributes exports to ONNX, TorchScript
    and torch.export. New channels are split evenly before and after the old ones, as in the zoo
    (`planes // 4` on each side when the width doubles), which its weights depend on.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the shortcut, ReLU after the sum (He et al. 2016, fig. 2)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out of place (the zoo uses +=): an in-place add would overwrite a tap on `bn2`.
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; `forward` returns logits only."""

    feature_layers: ClassVar[dict[str, str]] = {
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "embedding": "flatten",
    }

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, n, stride=1)
        self.layer2 = _stage(16, 32, n, stride=2)
        self.layer3 = _stage(32, 64, n, stride=2)
        # Parameter-free modules (state dict unchanged) so the pooled embedding can be tapped.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.avgpool(out)))


def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    """n basic blocks; only the first changes resolution and width."""
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def _kaiming_init(module: nn.Module) -> None:
    """He et al. 2015 (https://arxiv.org/abs/1502.01852) normal init of conv and linear weights,
    as pytorch_resnet_cifar10 does; BN and the linear bias keep PyTorch's defaults."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def _resnet(n: int, num_classes: int = 10) -> CifarResNet:
    """The shared builder: n blocks per stage, depth 6n+2."""
    return CifarResNet(n, num_classes=num_classes)


resnet20 = MODELS.register("resnet20")(partial(_resnet, 3))
resnet32 = MODELS.register("resnet32")(partial(_resnet, 5))
resnet44 = MODELS.register("resnet44")(partial(_resnet, 7))
resnet56 = MODELS.register("resnet56")(partial(_resnet, 9))
resnet110 = MODELS.register("resnet110")(partial(_resnet, 18))
