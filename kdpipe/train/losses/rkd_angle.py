"""Angle-wise relational distillation: Park, Kim, Lu & Cho 2019, "Relational Knowledge
Distillation", CVPR, https://arxiv.org/abs/1904.05068, equations (6)-(7).

For every triplet of embeddings in a batch, the cosine of the angle at the middle point,

    psi_A(t_i, t_j, t_k) = cos angle(t_i t_j t_k) = <e^ij, e^kj>
    e^ij = (t_i - t_j) / ||t_i - t_j||_2
    L_RKD-A = mean over all (i, j, k) of  l_delta(psi_A(t_i, t_j, t_k), psi_A(s_i, s_j, s_k))

with the Huber loss l_delta (delta = 1). As in the authors' code (github.com/lenscloth/RKD), the
mean runs over all N^3 entries; degenerate triplets (i = j or k = j) have a zero difference
vector, so both cosines are 0 and they add 0. Angles ignore the embeddings' scale and offset.
The paper weights it lambda_A = 50.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_cosines(embeddings: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N, N] with entry [j, i, k] = <e^ij, e^kj>, the cosine of the angle at t_j."""
    e = embeddings.float().flatten(1)
    # units[j, i] = e^ij = (t_i - t_j) / ||t_i - t_j||; a zero difference stays a zero vector.
    units = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(units, units.transpose(1, 2))


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """L_RKD-A between [N, D_s] student and [N, D_t] teacher embeddings (D_s may differ from D_t).

    The teacher's angles are computed without gradient: they are the target. Memory is N^2 * D
    for the unit vectors plus N^3 for the cosines (2M floats at N = 128).
    """
    with torch.no_grad():
        target = triplet_cosines(teacher_emb)
    return F.smooth_l1_loss(triplet_cosines(student_emb), target, beta=1.0)
