"""`lskd`: KD with logit standardization of Sun et al. 2024, https://arxiv.org/abs/2403.01427:
loss = lskd_ce_weight * CE(y, z) + lskd_weight * T^2 KL(softmax(Z(v)/T) || softmax(Z(z)/T)), with
Z the per-sample Z-score of the logits (see `kdpipe.train.losses.lskd`).

The paper's CIFAR-100 setting is 0.1 CE + 9 LSKD at base temperature T = 2; `temperature` is the
option KD shares, whose default is KD's 4, so pass `--temperature 2` (or `temperature = 2.0` in a
sweep cell) for the paper's setting.
"""

from __future__ import annotations

import torch

from kdpipe.train.losses import standardized_kd_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method


class StandardizedKDTerm(LossTerm):
    """T^2 KL between the softened distributions of the Z-scored teacher and student logits."""

    def __init__(self, temperature: float, weight: float) -> None:
        super().__init__("lskd", weight)
        self.temperature = temperature

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return standardized_kd_loss(student.logits, teacher.logits, self.temperature)


@register_method("lskd", label="KD with logit standardization (T={temperature:g})")
def lskd(ctx: MethodContext) -> Plan:
    """Sun et al. 2024: KD on Z-scored logits, 0.1 CE + 9 T^2 KL at T = 2 in the paper."""
    c = ctx.config
    return Plan(terms=[StandardizedKDTerm(c.temperature, weight=c.lskd_weight)],
                ce_weight=c.lskd_ce_weight)
