"""`at`: attention transfer of Zagoruyko & Komodakis 2017, https://arxiv.org/abs/1612.03928:
loss = CE(y, z) + beta * sum_j L_AT(student stage j, teacher stage j), p = 2
(see `kdpipe.train.losses.at`).

The pairs are the stage taps both networks declare (`kdpipe.models.stage_names`), in network
order: for the CIFAR ResNets and the plain CNNs `stage1`, `stage2`, `stage3`, the outputs of the
three residual groups (layer1-3), as the authors' CIFAR code pairs its three groups. Channel
counts may differ; a student map of another spatial size is resized to the teacher's. Spatial
maps are not kept in the teacher cache, so the teacher runs live for this method.
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import feature_shapes, stage_names
from kdpipe.train.losses import at_loss
from kdpipe.train.methods.base import LossTerm, MethodContext, Outputs, Plan, register_method


def at_taps(student: nn.Module, teacher: nn.Module) -> tuple[str, ...]:
    """The stage taps both networks declare, in the student's (network) order."""
    theirs = set(stage_names(teacher))
    common = tuple(name for name in stage_names(student) if name in theirs)
    if not common:
        raise KdpipeError(
            f"attention transfer pairs stage taps (stage1, stage2, ...), but the student "
            f"{type(student).__name__} declares {stage_names(student) or 'none'} and the teacher "
            f"{type(teacher).__name__} {stage_names(teacher) or 'none'}"
        )
    return common


class ATTerm(LossTerm):
    """Sum over the paired stage taps of the attention-map distance L_AT."""

    def __init__(self, taps: tuple[str, ...], weight: float) -> None:
        super().__init__("at", weight, student_taps=taps, teacher_taps=taps)

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        losses = [at_loss(student.features[t], teacher.features[t]) for t in self.student_taps]
        return torch.stack(losses).sum()


@register_method("at", label="Attention transfer (beta={at_weight:g})")
def at(ctx: MethodContext) -> Plan:
    """Zagoruyko & Komodakis 2017: CE + beta sum of attention-map losses over the stages."""
    taps = at_taps(ctx.student, ctx.teacher.model)
    batch_shape = (1, *ctx.input_shape)
    for model in (ctx.student, ctx.teacher.model):
        shapes = feature_shapes(model, batch_shape)
        flat = {t: shapes[t] for t in taps if len(shapes[t]) != 4}
        if flat:
            raise KdpipeError(f"attention transfer needs feature maps; {type(model).__name__} "
                              f"taps {flat} are not [B, C, H, W]")
    return Plan(terms=[ATTerm(taps, ctx.config.at_weight)])
