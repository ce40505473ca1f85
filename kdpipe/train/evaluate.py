"""Top-1 accuracy of a model on in-memory uint8 images, with the model's own normalization."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.data import BatchLoader
from kdpipe.errors import KdpipeError
from kdpipe.models import CheckpointMeta, checkpoint_meta, load_checkpoint


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> dict[str, float]:
    """`{"top1": percent, "loss": mean cross-entropy, "n": images}`, computed in eval mode."""
    was_training = model.training
    model.eval()
    loader = BatchLoader(
        images,
        labels,
        batch_size=batch_size,
        train=False,
        mean=mean,
        std=std,
        device=device,
        channels_last=channels_last,
    )
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in loader:
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.numel()
    model.train(was_training)
    return {"top1": 100.0 * correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}


def check_compatible(
    meta: CheckpointMeta, classes: Sequence[str], input_shape: Sequence[int], what: str
) -> None:
    """A clear error when a checkpoint was trained for other classes or another image size."""
    if list(meta.classes) != list(classes):
        raise KdpipeError(
            f"{what} was trained for classes {list(meta.classes)} but the data has "
            f"{list(classes)}; use a checkpoint trained on this data set"
        )
    if list(meta.input_shape) != list(input_shape):
        raise KdpipeError(
            f"{what} expects inputs of shape {list(meta.input_shape)} but the data has "
            f"{list(input_shape)}"
        )


def evaluate_checkpoint(
    path: str | Path,
    *,
    data: str | None = None,
    limit_test: int | None = None,
    device: str = "auto",
    download: bool = False,
    cache_dir: str | None = None,
) -> dict[str, float]:
    """Top-1 of a checkpoint file (kdpipe or an imported layout) on a data set's test split."""
    from kdpipe.train.config import TrainConfig
    from kdpipe.train.run import load_training_data
    from kdpipe.train.trainer import resolve_device

    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    config = TrainConfig(data=data, limit_test=limit_test, download=download, cache_dir=cache_dir)
    dataset = load_training_data(config)
    check_compatible(meta, dataset.classes, dataset.test_images.shape[1:], str(path))
    dev = resolve_device(device)
    return evaluate(
        model.to(dev), dataset.test_images, dataset.test_labels, meta.mean, meta.std, device=dev
    )
