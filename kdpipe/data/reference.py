"""The plain baseline loader: torchvision PIL transforms and a `torch.utils.data.DataLoader`.

What a CIFAR training script usually does (`RandomCrop(32, 4)`, `RandomHorizontalFlip`,
`ToTensor`, `Normalize`, worker processes), behind the same interface as `BatchLoader`, so a
benchmark or a config can swap one for the other. It visits images in the same (seed, epoch)
order as `BatchLoader`; its augmentation is drawn by the workers, seeded from (seed, epoch) when
`num_workers > 0` and from the global RNG otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from kdpipe.data import seeding
from kdpipe.data.augment import CROP_PADDING
from kdpipe.data.loader import (
    LOADERS,
    LoaderOptions,
    check_loader_args,
    loader_options,
    shard_order,
)


def reference_transform(
    train: bool, mean: Sequence[float], std: Sequence[float], size: int
) -> Callable[[Image.Image], torch.Tensor]:
    """The textbook per-image CIFAR pipeline on PIL images."""
    from torchvision import transforms

    augment = [transforms.RandomCrop(size, padding=CROP_PADDING),
               transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose(
        [*augment, transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    )


class TensorImageDataset(torch.utils.data.Dataset):
    """uint8 [N,3,H,W] images served one by one as PIL images through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC once, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays[i])), self.labels[i]


class ShardSampler(Sampler[int]):
    """`shard_order` as a sampler, so both loaders visit the same images in the same order."""

    def __init__(self, n: int, *, train: bool, seed: int, rank: int, world_size: int) -> None:
        self.n, self.train, self.seed = n, train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        return iter(shard_order(self.n, train=self.train, seed=self.seed, epoch=self.epoch,
                                rank=self.rank, world_size=self.world_size).tolist())

    def __len__(self) -> int:
        if self.train:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))


@LOADERS.register("reference")
class ReferenceLoader:
    """`BatchLoader`'s interface over a `DataLoader` with per-image PIL transforms.

    Reads uint8 tensors (each image turned back into a PIL image) or, through
    `from_image_folder`, a torchvision `ImageFolder` directory. The options are `BatchLoader`'s
    (a `LoaderOptions` or its fields as keywords); `num_workers` sets the worker processes.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 options: LoaderOptions | None = None, **overrides: Any) -> None:
        o = loader_options(options, overrides)
        check_loader_args(images, labels, o)
        transform = reference_transform(o.train, o.mean, o.std, size=images.shape[-1])
        self._setup(TensorImageDataset(images, labels, transform), o)

    @classmethod
    def from_image_folder(cls, folder: str | Path, options: LoaderOptions | None = None, *,
                          image_size: int = 32, **overrides: Any) -> ReferenceLoader:
        """A loader over one split folder (`folder/<class>/<image>`) read by torchvision's
        `ImageFolder`: the plain baseline exactly as a CIFAR script would write it. The
        options as for the constructor; `image_size` is the images' side in pixels."""
        from torchvision.datasets import ImageFolder

        o = loader_options(options, overrides)
        dataset = ImageFolder(str(folder), transform=reference_transform(o.train, o.mean, o.std,
                                                                         image_size))
        loader = cls.__new__(cls)
        loader._setup(dataset, o)
        return loader

    def _setup(self, dataset: torch.utils.data.Dataset, options: LoaderOptions) -> None:
        o = self.options = options
        self.device = torch.device(o.device)
        self.batch_size, self.train, self.seed = o.batch_size, o.train, o.seed
        self.channels_last = o.channels_last
        self.drop_last = o.drops_last
        self.epoch = 0
        self.sampler = ShardSampler(len(dataset), train=o.train, seed=o.seed, rank=o.rank,
                                    world_size=o.world_size)
        self.num_samples = len(self.sampler)
        # Worker seeds come from this generator when an epoch starts; reseeded in __iter__.
        self._generator = torch.Generator()
        self._loader = DataLoader(
            dataset, batch_size=o.batch_size, sampler=self.sampler, num_workers=o.num_workers,
            drop_last=self.drop_last, pin_memory=self.device.type == "cuda",
            generator=self._generator,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._generator.manual_seed(seeding.derive_seed(self.seed, self.epoch, seeding.AUGMENT))
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
