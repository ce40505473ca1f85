"""`dist`: DIST of Huang et al. 2022, https://arxiv.org/abs/2205.10536:
loss = CE(y, z) + T^2 (beta L_inter + gamma L_intra), correlations of the softened predictions
within each sample and within each class over the batch (see `kdpipe.train.losses.dist`)."""

from __future__ import annotations

import torch

from kdpipe.train.losses import dist_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method


class DISTTerm(LossTerm):
    """T^2 (beta * inter-class + gamma * intra-class) relation loss."""

    def __init__(self, beta: float, gamma: float, temperature: float) -> None:
        super().__init__("dist", 1.0)
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return dist_loss(student.logits, teacher.logits, self.beta, self.gamma, self.temperature)


@register_method("dist", label="DIST (beta={dist_beta:g}, gamma={dist_gamma:g}, T={temperature:g})")
def dist(ctx: MethodContext) -> Plan:
    """Huang et al. 2022: CE + T^2 (beta inter-class + gamma intra-class Pearson relations)."""
    c = ctx.config
    return Plan(terms=[DISTTerm(c.dist_beta, c.dist_gamma, c.temperature)])
