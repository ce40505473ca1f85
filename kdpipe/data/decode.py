"""Encoded images (JPEG, PNG, ...) to one uint8 [N,3,S,S] tensor, in parallel, resized once.

This runs once per data set, when the cache is built; training never decodes an image. Decoding
60,000 tiny JPEGs is dominated by PIL's per-image overhead, so the work is split into chunks and
spread over a process pool (about 2x faster on 2 cores than one loop).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdpipe.progress import console

# What torchvision's ImageFolder accepts, minus formats PIL cannot always read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
CHUNK = 1024  # images per pool task: large enough to hide inter-process overhead
MIN_PARALLEL = 4 * CHUNK  # below this a pool costs more than it saves

# Bilinear with PIL's antialiasing, the same filter as torchvision's `Resize` default.
RESAMPLE = Image.Resampling.BILINEAR


def decoder_description() -> str:
    """The JPEG decoder behind the reference numbers, e.g. "PIL 11.3.0 (libjpeg-turbo 3.1.0)":
    other decoders (jpeg-js, Android's BitmapFactory) round IDCTs differently."""
    from PIL import features

    if features.check_feature("libjpeg_turbo"):
        library = f"libjpeg-turbo {features.version_feature('libjpeg_turbo')}"
    else:
        library = f"libjpeg {features.version('jpg')}"
    return f"PIL {Image.__version__} ({library})"


class ImageDecodeError(ValueError):
    """An image that PIL cannot decode; `index` is its position in the input sequence."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def is_image_name(name: str) -> bool:
    """An image file by extension; hidden files (e.g. macOS `._x.jpg` forks) are not."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """An RGB uint8 [S,S,3] array; other sizes are resized to SxS (the aspect ratio is not kept)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE)
    return np.asarray(image)


def _decode_chunk(job: tuple[Sequence[bytes], int]) -> np.ndarray | tuple[int, str]:
    """Decode one chunk to [n,S,S,3], or return (index in chunk, reason) for the first bad image.

    Errors are returned, not raised, so the parent can name the file (exceptions from a pool
    worker lose their context) and raise the user-facing error itself.
    """
    blobs, size = job
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                out[i] = to_rgb_array(image, size)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return i, f"{type(e).__name__}: {e}"
    return out


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects CPU pinning and container limits
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def progress_bar(
    enabled: bool, description: str, total: int | None
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (stdout stays clean for results); `advance(n)` moves it."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not enabled,
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def decode_images(
    blobs: Sequence[bytes], size: int, *, progress: bool = False, description: str = "decoding"
) -> torch.Tensor:
    """Decode encoded images into a uint8 tensor [N,3,size,size] in input order.

    Raises `ImageDecodeError` for the first image that cannot be decoded (truncated, not an image).
    """
    chunks = [(blobs[i : i + CHUNK], size) for i in range(0, len(blobs), CHUNK)]
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    workers = min(_workers(), len(chunks))
    with progress_bar(progress, description, len(blobs)) as advance:
        if len(blobs) < MIN_PARALLEL or workers < 2:
            _collect(map(_decode_chunk, chunks), out, advance)
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                _collect(pool.imap(_decode_chunk, chunks), out, advance)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _collect(
    results: Iterable[np.ndarray | tuple[int, str]], out: np.ndarray,
    advance: Callable[[int], None],
) -> None:
    """Place chunk results into `out` in order; the first failed image raises."""
    for k, result in enumerate(results):
        if isinstance(result, tuple):
            index, reason = result
            raise ImageDecodeError(k * CHUNK + index, reason)
        out[k * CHUNK : k * CHUNK + len(result)] = result
        advance(len(result))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,3,H,W] resized to [N,3,size,size] with the same PIL filter as decoded files."""
    if images.shape[-2:] == (size, size):
        return images
    arrays = images.permute(0, 2, 3, 1).numpy()
    out = np.stack([to_rgb_array(Image.fromarray(a), size) for a in arrays])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
