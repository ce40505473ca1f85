"""Learning-rate schedules as pure functions of progress, stepped once per batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total_steps`.

    Linear warm-up from 0.1x to 1x over `warmup_steps` (Goyal et al. 2017), then either cosine decay
    to zero (Loshchilov & Hutter 2017) or a step decay by `gamma` at each milestone, given as a
    fraction of the whole run (He et al. 2016 decay at 50% and 75%).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return 0.1 + 0.9 * step / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "multistep":
        passed = sum(step >= m * total_steps for m in milestones)
        return gamma**passed
    raise ValueError(f"unknown schedule {schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch `LambdaLR` over `lr_factor`; its state_dict makes resume exact."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, warmup_steps, schedule, milestones, gamma),
    )
