"""Running a model over many images in the batch sizes it accepts: the one chunked top-1.

Parity (export), bench and evaluation all feed an artifact whole test sets in chunks. A file
exported for fixed batch sizes takes only those, so the last, short chunk is padded up to the size
by repeating its first image (a real image, whatever the model's input statistics), and the
padding's outputs are dropped: every image counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kdpipe.runtime.artifact import Artifact

EVAL_BATCH = 100  # images per call where the batch dimension is dynamic and unbounded


def eval_batch_size(artifact: Artifact, default: int = EVAL_BATCH) -> int:
    """Images per call: a fixed-batch file's own size, else `default` (within its bound)."""
    if artifact.batch_sizes:
        return max(artifact.batch_sizes)
    return min(default, artifact.max_batch_size or default)


def fit(images: np.ndarray, size: int) -> np.ndarray:
    """Exactly `size` images: cut, or padded by repeating the first."""
    if len(images) >= size:
        return np.ascontiguousarray(images[:size])
    pad = np.repeat(images[:1], size - len(images), axis=0)
    return np.ascontiguousarray(np.concatenate([images, pad]))


def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                  size: int) -> np.ndarray:
    """`run` over float32 `images` in chunks of exactly `size`; float32 outputs, one per image."""
    outputs = []
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        outputs.append(np.asarray(run(fit(chunk, size)))[: len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


def unit_floats(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 NCHW images -> float32 in [0, 1], the input every runtime session takes."""
    return np.ascontiguousarray(images_uint8, dtype=np.float32) / np.float32(255)


def top1(run: Callable[[np.ndarray], np.ndarray], artifact: Artifact, images_uint8: np.ndarray,
         labels: np.ndarray) -> float:
    """Top-1 percent of `run` (a session's `run`) on uint8 test images, chunked for `artifact`."""
    size = eval_batch_size(artifact)
    correct = 0
    for start in range(0, len(labels), size):  # converted chunk by chunk: 10k images stay uint8
        chunk = unit_floats(images_uint8[start:start + size])
        predicted = run_in_chunks(run, chunk, size).argmax(axis=1)
        correct += int((predicted == labels[start:start + size]).sum())
    return 100.0 * correct / len(labels)
