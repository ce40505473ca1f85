"""`rkd`: Relational Knowledge Distillation of Park et al. 2019, https://arxiv.org/abs/1904.05068:
loss = CE(y, z) + lambda_D * L_RKD-D + lambda_A * L_RKD-A on the pooled embeddings (section 4.2
trains with the task loss plus both terms, lambda_D = 25 and lambda_A = 50).

The relations are compared, not the embeddings, so a student whose embedding has another width
than the teacher's (ResNet20's 64 vs MobileNetV2's 1280) needs no projection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kdpipe.train.losses import rkd_angle_loss, rkd_distance_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method

EMBEDDING = "embedding"  # the pooled features before the classifier, a tap every model declares


class RelationTerm(LossTerm):
    """A relation loss between the student's and the teacher's embeddings of the batch."""

    def __init__(self, name: str, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weight: float) -> None:
        super().__init__(name, weight, student_taps=(EMBEDDING,), teacher_taps=(EMBEDDING,))
        self.loss = loss

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(student.features[EMBEDDING], teacher.features[EMBEDDING])


@register_method("rkd", label="RKD (distance + angle)")
def rkd(ctx: MethodContext) -> Plan:
    """Park et al. 2019: CE + lambda_D RKD-distance + lambda_A RKD-angle on the embeddings."""
    c = ctx.config
    return Plan(terms=[
        RelationTerm("rkd_distance", rkd_distance_loss, c.rkd_distance_weight),
        RelationTerm("rkd_angle", rkd_angle_loss, c.rkd_angle_weight),
    ])
