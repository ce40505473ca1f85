"""`kd`: response-based distillation of Hinton, Vinyals & Dean 2015,
https://arxiv.org/abs/1503.02531:  loss = (1 - alpha) * CE(y, z) + alpha * T^2 KL(p_T || q_T)
(see `kdpipe.train.losses.kd`)."""

from __future__ import annotations

import torch

from kdpipe.train.config import DistillConfig
from kdpipe.train.losses import kd_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method


class KDTerm(LossTerm):
    """T^2 KL between the temperature-softened teacher and student distributions."""

    def __init__(self, temperature: float, weight: float) -> None:
        super().__init__("kd", weight)
        self.temperature = temperature

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return kd_loss(student.logits, teacher.logits, self.temperature)


def kd_plan(config: DistillConfig) -> Plan:
    """The KD objective: soft targets weighted `alpha`, labels `1 - alpha` (FitNets stage 2 too)."""
    return Plan(terms=[KDTerm(config.temperature, weight=config.alpha)],
                ce_weight=1.0 - config.alpha)


@register_method("kd", label="KD (T={temperature:g}, alpha={alpha:g})")
def kd(ctx: MethodContext) -> Plan:
    """Hinton et al. 2015: (1 - alpha) CE + alpha T^2 KL(teacher_T || student_T)."""
    return kd_plan(ctx.config)
