"""CIFAR-10 constants the model room needs without importing the data room.

The data room keeps its own copy (arrows point down: `models` imports no stage); both spell the
standard label order, which is also the alphabetical order of the ImageFolder export.
"""

from __future__ import annotations

# Krizhevsky 2009, label order 0..9.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Input normalization of the pytorch_resnet_cifar10 zoo (the ImageNet statistics it reused).
ZOO_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
ZOO_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

# Channels, height, width of one CIFAR image.
CIFAR_INPUT_SHAPE: tuple[int, ...] = (3, 32, 32)
