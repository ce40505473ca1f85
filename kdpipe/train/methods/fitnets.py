"""`fitnets`: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", https://arxiv.org/abs/1412.6550.

Two stages, as in the paper (section 2.2, algorithm 1):

1. Hint training: the student up to its guided layer, plus the regressor, minimise
   L_HT = 1/2 ||u_h - r(v_g)||^2 (`kdpipe.train.losses.hint`). Only those parameters are updated;
   the layers after the guided one keep their weights and, held in eval mode, their batch-norm
   statistics. Run for `hint_epochs` epochs in `out/stage1/` with its own resumable checkpoint.
2. The whole student, from the stage-1 weights, trained with KD (`kdpipe.train.methods.kd`).

`hint_layer` picks both the guided (student) and the hint (teacher) layer among the models' stage
taps: `middle` is the middle stage (Romero's choice, the survey's "mimicking middle layer"),
`final` the last stage before pooling (the survey's "mimicking final layer").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import FeatureTaps, feature_shapes, stage_names
from kdpipe.train.losses import HintRegressor, hint_loss
from kdpipe.train.methods.base import MethodContext, Plan, Stage, register_method
from kdpipe.train.methods.distill_objective import TeacherObjective, tapped_student
from kdpipe.train.methods.kd import kd_plan
from kdpipe.train.methods.teacher import Teacher
from kdpipe.train.trainer_objective import StepOutput


def hint_tap(model: nn.Module, which: str) -> str:
    """The stage tap for `which` = "middle" (the lower middle for an even count) or "final"."""
    stages = stage_names(model)
    if not stages:
        raise KdpipeError(
            f"{type(model).__name__} declares no stage taps (feature_layers stage1, stage2, ...); "
            "FitNets needs them to pick the hint and guided layers"
        )
    if which not in ("middle", "final"):
        raise KdpipeError(f"hint_layer must be middle or final, got {which!r}")
    return stages[(len(stages) - 1) // 2] if which == "middle" else stages[-1]


def guided_parameters(taps: FeatureTaps, tap: str, input_shape: Sequence[int]) -> set[str]:
    """Names of the parameters the output of `tap` depends on (found through autograd, so any
    architecture works): the "student up to the guided layer" of Romero's stage 1."""
    student = taps.model
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    was_training = student.training
    student.eval()  # batch-norm statistics must not move
    try:
        x = torch.zeros(2, *input_shape, device=named[0][1].device)
        _, features = taps(x)
        grads = torch.autograd.grad(features[tap].sum(), [p for _, p in named], allow_unused=True)
    finally:
        student.train(was_training)
    return {n for (n, _), g in zip(named, grads, strict=True) if g is not None}


class HintObjective(TeacherObjective):
    """Stage 1: `hint_loss(regressor(guided layer), teacher hint)`; only the guided part of the
    student and the regressor are trainable."""

    def __init__(self, student: nn.Module, teacher: Teacher, regressor: nn.Module,
                 student_tap: str, teacher_tap: str, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.student = student
        self.regressor = regressor
        self.teacher = teacher
        teacher.require((teacher_tap,))
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.taps = tapped_student(student, (student_tap,))
        guided = guided_parameters(self.taps, student_tap, input_shape)
        for name, p in student.named_parameters():
            p.requires_grad_(name in guided)  # the rest is neither optimized nor decayed
        # Parametrized modules after the guided layer: kept in eval mode by `train()`.
        self.after_guided = [m for m in student.modules()
                             if any(True for _ in m.parameters(recurse=False))
                             and not any(p.requires_grad for p in m.parameters(recurse=False))]

    def train(self, mode: bool = True) -> HintObjective:
        super().train(mode)
        for module in self.after_guided:
            module.train(False)
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        # Spatial hints would be gigabytes per epoch in the teacher cache: computed live.
        hint = self.teacher(images, (self.teacher_tap,), use_cache=False)
        logits, features = self.taps(images)
        loss = hint_loss(self.regressor(features[self.student_tap]),
                         hint.features[self.teacher_tap])
        return StepOutput(loss, logits, {"hint": loss.detach()})


@register_method("fitnets", label="Mimicking {hint_layer} layer")
def fitnets(ctx: MethodContext) -> Plan:
    """Romero et al. 2015: hint stage (guided layer + regressor), then KD.

    Stage 1 trains a copy of the student; stage 2 starts from its checkpoint.
    """
    c = ctx.config
    student_tap = hint_tap(ctx.student, c.hint_layer)
    teacher_tap = hint_tap(ctx.teacher.model, c.hint_layer)
    batch_shape = (1, *ctx.input_shape)
    s_shape = feature_shapes(ctx.student, batch_shape)[student_tap]
    t_shape = feature_shapes(ctx.teacher.model, batch_shape)[teacher_tap]
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise KdpipeError(f"FitNets hints must be feature maps; got {s_shape} and {t_shape}")
    regressor = HintRegressor(s_shape[1], t_shape[1], s_shape[2:], t_shape[2:])
    plan = kd_plan(c)
    if c.hint_epochs > 0:
        # A copy: freezing the layers after the guided one must not leak into stage 2, which
        # starts from the stage-1 checkpoint's weights.
        hint = HintObjective(copy.deepcopy(ctx.student), ctx.teacher, regressor, student_tap,
                             teacher_tap, ctx.input_shape)
        plan.stages.append(Stage(
            "stage1", c.hint_epochs, hint,
            about=f"FitNets hints: the student up to its {c.hint_layer} stage and the regressor "
                  "learn the teacher's feature map; top-1 stays near chance until the KD stage"))
    return plan
