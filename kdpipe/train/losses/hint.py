"""Hint-based training: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets",
https://arxiv.org/abs/1412.6550, equation (3).

    L_HT(W_Guided, W_r) = 1/2 || u_h(x; W_Hint) - r(v_g(x; W_Guided); W_r) ||^2

u_h is the teacher's hint layer, v_g the student's guided layer and r the regressor
(`kdpipe.train.losses.regressor.HintRegressor`) that maps the guided layer to the hint's shape.
kdpipe normalizes the squared norm by the number of elements (batch x channels x height x width),
i.e. `0.5 * mse(r(v_g), u_h)`, so the loss scale does not depend on the batch or the layer size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """`0.5 * mean((r(v_g) - u_h)^2)`: `student_feature` is the regressor's output r(v_g),
    `teacher_feature` the teacher's hint u_h, of the same shape; computed in float32."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hint_loss needs equal shapes; got regressor output {tuple(student_feature.shape)} "
            f"and teacher hint {tuple(teacher_feature.shape)}"
        )
    return 0.5 * F.mse_loss(student_feature.float(), teacher_feature.float())
