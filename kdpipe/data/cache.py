"""The uint8 image cache: a data set decoded once, loaded again with one `torch.load`.

A cache file holds a dict of tensors and plain values, so it loads with `weights_only=True` (no
code runs). Its name carries the source kind, the source's content fingerprint, the image size
and the format version, so a changed source, size or format simply misses. A file that cannot be
loaded or does not hold what it should is treated as missing and rebuilt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from kdpipe.atomic import torch_save

log = logging.getLogger(__name__)

FORMAT = "kdpipe.data.cache"
VERSION = 1  # bump when the layout or the decoding changes, so old files miss
TENSORS = ("train_images", "train_labels", "test_images", "test_labels")
_WARNED: set[Path] = set()  # cache folders already reported as unwritable


def default_cache_dir() -> Path:
    """`$KDPIPE_CACHE` if set, else `~/.cache/kdpipe`."""
    env = os.environ.get("KDPIPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdpipe"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_file(cache_dir: Path, kind: str, fingerprint: str, image_size: int) -> Path:
    return cache_dir / "data" / f"{kind}-{fingerprint[:24]}-{image_size}px-v{VERSION}.pt"


def load_cached(path: Path, image_size: int) -> dict[str, Any] | None:
    """The cached payload, or None when the file is absent, unreadable or inconsistent."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        problem = _check(payload, image_size)
    except Exception as e:  # a truncated or foreign file can fail in many ways
        problem = f"{type(e).__name__}: {e}"
    if problem:
        log.warning("ignoring damaged image cache %s (%s); rebuilding it", path, problem)
        return None
    return payload


def save_cached(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically; a cache that cannot be written costs speed next time, not this run."""
    try:
        torch_save(path, {"format": FORMAT, "version": VERSION, **payload})
    # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), not an OSError.
    except (OSError, RuntimeError) as e:
        if path.parent not in _WARNED:  # once per folder: a sweep loads its data many times
            _WARNED.add(path.parent)
            log.warning("could not write the image cache %s (%s); going on without it. Set "
                        "KDPIPE_CACHE or --cache-dir to a writable folder with room to make the "
                        "next load fast", path, e)


def _check(payload: Any, image_size: int) -> str | None:
    """What is wrong with a loaded payload, or None."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return "not a kdpipe image cache"
    if payload.get("version") != VERSION:
        return f"format version {payload.get('version')}, expected {VERSION}"
    classes = payload.get("classes")
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        return "no class names"
    for split in ("train", "test"):
        images, labels = payload.get(f"{split}_images"), payload.get(f"{split}_labels")
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            return f"{split} tensors missing"
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, image_size, image_size):
            return f"{split} images are {images.dtype} {tuple(images.shape)}"
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            return f"{split} labels do not match the images"
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            return f"{split} labels out of range"
    return None
