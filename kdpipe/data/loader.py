"""The fast in-memory batch loader, the shared normalization, and the loader registry.

The whole uint8 train set moves to the training device once; each batch is then an index
gather, a batched crop+flip (`augment.crop_flip`) and a normalization, all tensor ops on that
device. No worker processes and no per-image PIL work.

Shuffle order and augmentation are pure functions of (seed, epoch): the order comes from
`shard_order`, and each image's crop offsets and flip are drawn per epoch for every image index,
so an image is augmented the same way whatever the batch size, rank or world size. Teacher
outputs can therefore be computed once per epoch and shared.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from kdpipe.data import seeding
from kdpipe.data.augment import CROP_PADDING, crop_flip, draw_params
from kdpipe.errors import KdpipeError
from kdpipe.registry import Registry


@dataclass(frozen=True)
class LoaderOptions:
    """How a loader batches one split: the options of every loader in `LOADERS`, declared once.

    A loader takes one (`BatchLoader(images, labels, options)`) or the same names as keywords
    (`BatchLoader(images, labels, batch_size=128, train=True, mean=..., std=...)`).
    """

    batch_size: int  # images per batch, per process
    train: bool  # shuffled, cropped and flipped, and by default the partial batch dropped
    mean: Sequence[float]  # per channel, of images scaled to [0, 1]
    std: Sequence[float]
    device: torch.device | str = "cpu"  # where the batches are made and returned
    seed: int = 0  # with the epoch, decides the order and the augmentation
    channels_last: bool = False  # batches in channels-last memory format
    drop_last: bool | None = None  # None: drop the partial batch when training only
    rank: int = 0  # this process's shard of `world_size` (distributed training)
    world_size: int = 1
    num_workers: int = 2  # the reference loader's worker processes; the tensor loader has none

    @property
    def drops_last(self) -> bool:
        """Whether the last partial batch is dropped (`drop_last`, else `train`)."""
        return self.train if self.drop_last is None else self.drop_last


def loader_options(options: LoaderOptions | None, overrides: dict[str, Any]) -> LoaderOptions:
    """`options` with `overrides` (option name -> value) applied, or built from `overrides`
    alone; an unknown name is a `TypeError`, as from a function's signature."""
    if options is None:
        return LoaderOptions(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options


@runtime_checkable
class Loader(Protocol):
    """What the trainer iterates: the tensor loader and the reference loader alike (chosen by
    `TrainConfig.loader`). Each is built as `cls(images, labels, options: LoaderOptions)` (or
    with the options as keywords)."""

    batch_size: int
    num_samples: int

    def set_epoch(self, epoch: int) -> None:
        """Fix the (seed, epoch) of the next pass: its order and augmentation."""

    def __len__(self) -> int:
        """Batches per epoch for this rank."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized float images, int64 labels) batches on the loader's device."""


LOADERS: Registry[type[Loader]] = Registry("loader")


def _channel_stats(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    def as_tensor(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float32, device=device).view(-1, 1, 1)

    return as_tensor(mean), as_tensor(std)


def normalize(
    images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 [..., C, H, W] to float32 `(x / 255 - mean) / std` per channel, on the same device.

    The same arithmetic, in the same order, as torchvision's `ToTensor` + `Normalize`, so the
    tensor and reference loaders agree to the bit.
    """
    mean_t, std_t = _channel_stats(mean, std, images_uint8.device)
    return _normalize(images_uint8, mean_t, std_t)


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255).sub_(mean).div_(std)


def shard_order(
    n: int, *, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The image indices one rank visits in one epoch (CPU int64).

    Training: a (seed, epoch) permutation, cut to a multiple of `world_size` and dealt out
    round-robin, so ranks get disjoint shards of equal size (as `DistributedSampler` with
    `drop_last=True`). Evaluation: every image in order, dealt out round-robin, so the ranks
    together cover each image exactly once (shards differ in size by at most one).
    """
    if train:
        order = torch.randperm(n, generator=seeding.generator(seed, epoch, seeding.ORDER))
        order = order[: n - n % world_size]
    else:
        order = torch.arange(n)
    return order[rank::world_size]


def check_loader_args(images: torch.Tensor, labels: torch.Tensor, options: LoaderOptions) -> None:
    """Programming errors in a loader's arguments, caught early with a clear message."""
    mean, std, batch_size = options.mean, options.std, options.batch_size
    rank, world_size = options.rank, options.world_size
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N={len(images)}, got {tuple(labels.shape)}")
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(f"mean and std need {images.shape[1]} values, got {len(mean)}, {len(std)}")
    if batch_size < 1:
        raise KdpipeError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")


@LOADERS.register("tensor")
class BatchLoader:
    """Batches of normalized float images and int64 labels from uint8 tensors, on `device`.

    `train=True`: shuffled, random crop (4-pixel zero padding) and horizontal flip, and by default
    the last partial batch dropped. `train=False`: in order, no augmentation, nothing dropped.
    Call `set_epoch(e)` before each epoch, as with `DistributedSampler`: the same (seed, epoch)
    gives identical batches. The options are a `LoaderOptions` or its fields as keywords
    (`num_workers` is ignored: no workers here).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 options: LoaderOptions | None = None, **overrides: Any) -> None:
        o = self.options = loader_options(options, overrides)
        check_loader_args(images, labels, o)
        self.device = torch.device(o.device)
        self.images = images.to(self.device)  # once; a no-op for CPU tensors on the CPU
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = o.batch_size
        self.train = o.train
        self.seed = o.seed
        self.channels_last = o.channels_last
        self.drop_last = o.drops_last
        self.rank, self.world_size = o.rank, o.world_size
        self.epoch = 0
        self._mean, self._std = _channel_stats(o.mean, o.std, self.device)
        self.num_samples = len(self.order())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """Indices of the images this rank visits this epoch, in batch order (CPU)."""
        return shard_order(len(self.labels), train=self.train, seed=self.seed, epoch=self.epoch,
                           rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.device)
        if self.train:
            # Drawn for every image index (not per batch), so they do not depend on the sharding.
            gen = seeding.generator(self.seed, self.epoch, seeding.AUGMENT)
            dy, dx, flip = (p.to(self.device) for p in
                            draw_params(len(self.labels), CROP_PADDING, gen))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if self.train:
                x = crop_flip(x, CROP_PADDING, dy[idx], dx[idx], flip[idx])
            x = _normalize(x, self._mean, self._std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)


def make_loader(kind: str, images: torch.Tensor, labels: torch.Tensor,
                options: LoaderOptions | None = None, **overrides: Any) -> Loader:
    """The loader registered as `kind` ("tensor" or "reference") over `images` and `labels`;
    an unknown kind lists both. The options as for `BatchLoader`: one config carries them all
    (`num_workers` too) whichever loader it names."""
    return LOADERS.get(kind)(images, labels, loader_options(options, overrides))
