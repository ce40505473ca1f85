"""The in-memory data set and `load_dataset`, which fills it from a source through the cache."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdpipe.data.cache import cache_file, load_cached, resolve_cache_dir, save_cached
from kdpipe.data.sources import resolve_source
from kdpipe.errors import KdpipeError

log = logging.getLogger(__name__)

# Krizhevsky 2009, label order 0..9 (also the alphabetical order of the ImageFolder export).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# The project's input normalization: that of the pytorch_resnet_cifar10 zoo (ImageNet statistics),
# so the zoo's pretrained teachers and our students see the same inputs.
CIFAR10_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
CIFAR10_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

# The shared CIFAR-10 JPEG export, relative to the working folder or to the repository root.
SHARED_TARBALL = Path("..", "shared", "datasets", "cifar10-images.tar.gz")


@dataclass
class Dataset:
    """Both splits of an image classification set in memory, as uint8 [N,3,H,W] and int64 [N]."""

    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    source: str  # where the images came from, for people
    source_hash: str  # content fingerprint of the source (the cache key)
    val_images: torch.Tensor | None = field(default=None, repr=False)
    val_labels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.train_images.shape[1:]
        return c, h, w

    def __str__(self) -> str:
        val = 0 if self.val_labels is None else self.val_labels.numel()
        return (f"{self.source}: {self.train_labels.numel()} train, {val} val, "
                f"{self.test_labels.numel()} test images of {self.num_classes} classes")


def load_dataset(
    path: str | Path | None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    image_size: int = 32,
    progress: bool = True,
) -> Dataset:
    """Load CIFAR-10 (or any ImageFolder-style set) from `path`, decoding only the first time.

    `path` is a `.tar`/`.tar.gz`/`.tgz` of an ImageFolder tree, a folder holding `train/` and
    `test/` class folders, or a folder holding (or named) `cifar-10-batches-py`; `None` means
    torchvision's layout inside the cache folder. `download=True` lets torchvision fetch CIFAR-10
    there when it is missing. Images of another size are resized to `image_size` once, when the
    cache (in `cache_dir`, default `$KDPIPE_CACHE` or `~/.cache/kdpipe`) is built.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise KdpipeError(f"image_size must be a positive integer, got {image_size!r}")
    cache_root = resolve_cache_dir(cache_dir)
    source = resolve_source(path, download=download, cache_dir=cache_root)
    fingerprint = source.fingerprint()
    file = cache_file(cache_root, source.kind, fingerprint, image_size)
    payload = load_cached(file, image_size)
    if payload is None:
        start = time.perf_counter()
        decoded = source.read(image_size, progress)
        payload = {name: getattr(decoded, name) for name in
                   ("train_images", "train_labels", "test_images", "test_labels")}
        payload["classes"] = list(decoded.classes)
        save_cached(file, payload)
        log.info("decoded %s in %.1f s; cached in %s", source.describe(),
                 time.perf_counter() - start, file)
    return Dataset(
        train_images=payload["train_images"],
        train_labels=payload["train_labels"],
        test_images=payload["test_images"],
        test_labels=payload["test_labels"],
        classes=tuple(payload["classes"]),
        source=source.describe(),
        source_hash=fingerprint,
    )


def default_data_path() -> Path | None:
    """The shared CIFAR-10 tarball (`../shared/datasets/...`) beside the working folder or the
    repository, if it is there; else None."""
    repo_root = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo_root):
        candidate = base / SHARED_TARBALL
        if candidate.is_file():
            return candidate.resolve()
    return None
