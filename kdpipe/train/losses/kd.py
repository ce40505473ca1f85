"""Response-based distillation: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
Neural Network", https://arxiv.org/abs/1503.02531, section 2.

With soft targets p = softmax(v / T) of the teacher logits v and q = softmax(z / T) of the student
logits z, the loss is

    L_KD = T^2 * KL(p || q) = T^2 * sum_i p_i (log p_i - log q_i),   averaged over the batch.

Its gradient is dL_KD/dz_i = T (q_i - p_i) per example: the paper's (1/T)(q_i - p_i) of the
cross-entropy with soft targets, multiplied by the T^2 that the paper recommends "so that the
relative contributions of the hard and soft targets remain roughly unchanged" when T changes.
kdpipe's KD objective is  (1 - alpha) * CE(y, z) + alpha * L_KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, mean over the batch, in float32.

    `student_logits` and `teacher_logits` are [B, classes]; the teacher's are treated as fixed
    targets (pass them detached, as a frozen teacher's are).
    """
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=1)
    # log_target=True: both sides in log space, so tiny teacher probabilities stay exact.
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)
