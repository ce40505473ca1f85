"""Attention transfer: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving
the Performance of Convolutional Neural Networks via Attention Transfer", ICLR,
https://arxiv.org/abs/1612.03928, section 3.1, activation-based with p = 2.

A feature map A of C channels becomes a spatial attention map Q = F(A) = 1/C sum_c A_c^2 (the mean
over channels of the squared activations), flattened per sample. For each pair j of student and
teacher layers,

    L_AT,j = mean over (sample, position) of ( Q^s_j / ||Q^s_j||_2 - Q^t_j / ||Q^t_j||_2 )^2

and the method adds beta * sum_j L_AT,j to the cross-entropy. This is the authors' code
(github.com/szagoruyko/attention-transfer, `at` and `at_loss`), whose CIFAR runs use beta = 1000
(README: `--beta 1e+3`) over the outputs of the three residual groups. (The paper's equation (2)
writes the penalty as beta/2 times the p-norm of the difference; kdpipe follows the code.)

The channel counts of the two maps may differ (the mean over channels removes them). When the
spatial sizes differ, kdpipe resizes the student's attention map Q^s (before normalization) to the
teacher's size by bilinear interpolation, so the loss compares maps of one resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_map(feature: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W] (or [B, h*w] at `size`): mean over channels of the squared
    feature, bilinearly resized to `size` if given, then L2-normalized per sample."""
    q = feature.float().pow(2).mean(1, keepdim=True)
    if size is not None and tuple(q.shape[2:]) != tuple(size):
        q = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
    return F.normalize(q.flatten(1), p=2, dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """L_AT for one [B, C_s, H_s, W_s] student and [B, C_t, H_t, W_t] teacher feature map; the
    student's map is resized to (H_t, W_t) when the sizes differ. The teacher's map is computed
    without gradient: it is the target."""
    if student_feature.dim() != 4 or teacher_feature.dim() != 4:
        raise ValueError(
            f"at_loss needs [B, C, H, W] feature maps; got {tuple(student_feature.shape)} and "
            f"{tuple(teacher_feature.shape)}"
        )
    with torch.no_grad():
        target = attention_map(teacher_feature)
    size = (teacher_feature.shape[2], teacher_feature.shape[3])
    return (attention_map(student_feature, size) - target).pow(2).mean()
