"""Model size and cost: parameters and multiply-accumulates (MACs).

MACs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of the
convolution and matrix-multiply operators actually dispatched (2 per multiply-accumulate), so
functional convolutions in a user's model count too. Batch norm, activations, pooling and the
residual additions are left out, the convention of He et al. 2016 and the MobileNet papers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdpipe.models.features import unwrap_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one eval-mode forward of a zero tensor of `input_shape`.

    The count covers the whole batch of `input_shape`; the default batch of 1 gives per-image MACs.
    """
    inner = unwrap_model(model)
    reference = next(inner.parameters(), torch.empty(0))
    x = torch.zeros(input_shape, device=reference.device, dtype=reference.dtype)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            inner(x)
    finally:
        inner.train(was_training)
    return counter.get_total_flops() // 2
