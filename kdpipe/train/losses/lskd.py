"""Logit standardization: Sun, Ren, Li, Wang & Cao 2024, "Logit Standardization in Knowledge
Distillation", CVPR, https://arxiv.org/abs/2403.01427, section 3, algorithm 1.

KD with a shared temperature asks the student to match the teacher's logit range as well as their
relations. Standardizing each sample's logits first (the Z-score), the student only has to match
their relations:

    Z(z) = (z - mean(z)) / (std(z) + eps),   std unbiased over the C classes, eps = 1e-7
    L_LSKD = T^2 * KL(softmax(Z(v) / T) || softmax(Z(z) / T)),   averaged over the batch

with v the teacher's and z the student's logits; T is the paper's "base temperature". As in the
authors' code (github.com/sunshangquan/logit-standardization-KD, `mdistiller/distillers/KD.py`),
eps is added to the standard deviation. Their CIFAR-100 setting (README: `--logit-stand
--base-temp 2 --kd-weight 9`) is 0.1 * CE + 9 * L_LSKD at T = 2.
"""

from __future__ import annotations

import torch

from kdpipe.train.losses.kd import kd_loss

EPS = 1e-7  # added to the standard deviation, as in the authors' code


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Each row of [B, C] logits shifted to mean 0 and divided by its unbiased std (+ eps)."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + EPS)


def standardized_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T))`, mean over the batch, in float32."""
    return kd_loss(standardize(student_logits.float()), standardize(teacher_logits.float()),
                   temperature)
