"""`dkd`: Decoupled Knowledge Distillation of Zhao et al. 2022, https://arxiv.org/abs/2203.08679:
loss = CE(y, z) + w(step) * (alpha * TCKD + beta * NCKD) (see `kdpipe.train.losses.dkd`).

The paper (and mdistiller, its code) ramps the DKD weight w linearly from 0 to 1 over the first 20
of 240 epochs, so the large beta does not swamp the student's first, near-random predictions.
kdpipe counts that warm-up in epochs of the schedule actually run, per step: w = min(1, e / W)
with e the fractional epoch at the step (0 at the first step) and W = `dkd_warmup_epochs`. The
logged `train_dkd` is the weighted value, as mdistiller logs it.
"""

from __future__ import annotations

import torch

from kdpipe.errors import KdpipeError
from kdpipe.train.losses import dkd_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method


class DKDTerm(LossTerm):
    """`min(1, epochs / warmup_epochs) * (alpha TCKD + beta NCKD)` at temperature T."""

    def __init__(self, alpha: float, beta: float, temperature: float,
                 warmup_epochs: float) -> None:
        super().__init__("dkd", 1.0)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        # A tensor, not a float attribute: a compiled objective then reads each step's value
        # instead of recompiling for it. Not persistent: the trainer sets it before every step.
        self.register_buffer("epochs", torch.zeros(()), persistent=False)

    def start_step(self, epochs: float) -> None:
        self.epochs.fill_(epochs)

    def ramp(self) -> torch.Tensor:
        """The warm-up weight in [0, 1] at the current position of the schedule."""
        if self.warmup_epochs <= 0:
            return torch.ones_like(self.epochs)
        return (self.epochs / self.warmup_epochs).clamp(max=1.0)

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        loss = dkd_loss(student.logits, teacher.logits, labels, self.alpha, self.beta,
                        self.temperature)
        return self.ramp() * loss


@register_method("dkd", label="DKD (alpha={dkd_alpha:g}, beta={dkd_beta:g}, T={temperature:g})")
def dkd(ctx: MethodContext) -> Plan:
    """Zhao et al. 2022: CE + warm-up * (alpha TCKD + beta NCKD), the target and non-target KD."""
    c = ctx.config
    if c.dkd_warmup_epochs < 0:
        raise KdpipeError(f"dkd_warmup_epochs must be >= 0, got {c.dkd_warmup_epochs}")
    return Plan(terms=[DKDTerm(c.dkd_alpha, c.dkd_beta, c.temperature, c.dkd_warmup_epochs)])
