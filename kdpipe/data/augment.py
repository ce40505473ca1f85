"""Batched CIFAR augmentation as tensor ops: random crop with zero padding and horizontal flip.

The standard CIFAR recipe (He et al. 2016, sec. 4.2): pad 4 pixels on each side, take a random
32x32 window, mirror with probability 1/2. Here a whole uint8 batch is padded once and cropped and
mirrored by one `gather`, so augmentation costs well under a millisecond per batch of 128 on a
CPU and runs on whatever device the batch lives on. Random parameters are drawn on the CPU, so the
same generator gives the same crops on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CROP_PADDING = 4  # pixels of zero padding before the random crop (He et al. 2016, sec. 4.2)


def draw_params(
    n: int, padding: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row offsets, column offsets (int64 in [0, 2*padding]) and flip flags (bool) for n images."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(
    x: torch.Tensor,
    padding: int,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-pad `x` [N,C,H,W] by `padding`, crop the HxW window at (dy, dx), mirror where `flip`.

    Image i of the result is `pad(x[i])[:, dy[i]:dy[i]+H, dx[i]:dx[i]+W]`, flipped left-right when
    `flip[i]`. Crop and flip are one gather over flat pixel indices: a flipped window reads its
    columns from right to left, which costs nothing extra.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    wp = w + 2 * padding
    dy, dx = dy.to(x.device), dx.to(x.device)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    rows = dy[:, None] + ys  # [N, H]
    cols = dx[:, None] + xs  # [N, W]
    if flip is not None:
        cols = torch.where(flip.to(x.device)[:, None], dx[:, None] + (w - 1) - xs, cols)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, flat).view(n, c, h, w)


def random_crop(
    x: torch.Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each image of the batch zero-padded by `padding` and cropped back to its size at random."""
    dy, dx, _ = draw_params(x.shape[0], padding, generator)
    return crop_flip(x, padding, dy, dx)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch mirrored left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
