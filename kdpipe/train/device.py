"""The training device: `auto` resolved once, the same way by the trainer, distill and eval."""

from __future__ import annotations

import torch

from kdpipe.errors import KdpipeError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdpipeError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return device
