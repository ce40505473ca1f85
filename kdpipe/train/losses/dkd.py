"""Decoupled knowledge distillation: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge
Distillation", CVPR, https://arxiv.org/abs/2203.08679, section 3.

With p = softmax(z / T) over the C classes and t the label, the KD loss splits into a
target-class and a non-target-class part:

    b = [p_t, 1 - p_t]                                  binary (target, all others) probabilities
    p^ = softmax over the classes j != t of z_j / T     the distribution among the non-targets
    TCKD = T^2 * KL(b_teacher || b_student)
    NCKD = T^2 * KL(p^_teacher || p^_student)
    L_DKD = alpha * TCKD + beta * NCKD,                 each KL averaged over the batch

As in the authors' code (github.com/megvii-research/mdistiller, `distillers/DKD.py`), p^ is a
softmax over all classes with 1000 subtracted from the target's z_t / T, so the target gets
probability exp(-1000) = 0 in float32 while every tensor keeps its shape and stays finite. The
paper's CIFAR-100 setting is alpha = 1, beta = 8, T = 4, trained with CE + L_DKD whose weight
warms up linearly over the first 20 of 240 epochs (the warm-up belongs to the method,
`kdpipe.train.methods.dkd`). With beta = 1 - p_t^teacher and alpha = 1 it would be classical KD
(the paper's reformulation of KD); DKD decouples the two weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK = 1000.0  # subtracted from the target's scaled logit for the non-target softmax


def _masked(logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    return logits - MASK * target_mask


def binary_log_probs(scaled_logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """[B, C] logits / T -> [B, 2] log [p_t, 1 - p_t], in log space so that a confident network
    (p_t ~ 1 in float32) still has a finite log(1 - p_t)."""
    target = (scaled_logits * target_mask).sum(1, keepdim=True)
    others = torch.logsumexp(_masked(scaled_logits, target_mask), dim=1, keepdim=True)
    return F.log_softmax(torch.cat([target, others], dim=1), dim=1)


def tckd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """T^2 KL(b_teacher || b_student) on the binary target/non-target split, mean over the batch."""
    t = temperature
    s, te = student_logits.float() / t, teacher_logits.float() / t
    mask = F.one_hot(labels, s.shape[1]).to(s.dtype)
    return F.kl_div(binary_log_probs(s, mask), binary_log_probs(te, mask), reduction="batchmean",
                    log_target=True) * (t * t)


def nckd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """T^2 KL(p^_teacher || p^_student) among the non-target classes, mean over the batch."""
    t = temperature
    s, te = student_logits.float() / t, teacher_logits.float() / t
    mask = F.one_hot(labels, s.shape[1]).to(s.dtype)
    log_q = F.log_softmax(_masked(s, mask), dim=1)
    log_p = F.log_softmax(_masked(te, mask), dim=1)
    # The target's teacher probability is exactly 0, so its (finite) log difference adds 0.
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """`alpha * TCKD + beta * NCKD` (see the module docstring), in float32.

    `student_logits` and `teacher_logits` are [B, C], `labels` [B] class indices; the teacher's
    logits are fixed targets (pass them detached, as a frozen teacher's are).
    """
    return (alpha * tckd_loss(student_logits, teacher_logits, labels, temperature)
            + beta * nckd_loss(student_logits, teacher_logits, labels, temperature))
