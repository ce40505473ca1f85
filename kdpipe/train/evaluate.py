"""Top-1 accuracy of a model on in-memory uint8 images, with the model's own normalization."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.data import BatchLoader
from kdpipe.models import check_fits_data, checkpoint_meta, load_checkpoint
from kdpipe.train.config import TrainConfig
from kdpipe.train.data import load_training_data
from kdpipe.train.device import resolve_device


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
    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    config = TrainConfig(data=data, limit_test=limit_test, download=download, cache_dir=cache_dir)
    dataset = load_training_data(config)
    check_fits_data(str(path), meta.classes, meta.input_shape, dataset.classes,
                    dataset.test_images.shape[1:])
    dev = resolve_device(device)
    return evaluate(
        model.to(dev), dataset.test_images, dataset.test_labels, meta.mean, meta.std, device=dev
    )
