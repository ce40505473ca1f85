"""Distance-wise relational distillation: Park, Kim, Lu & Cho 2019, "Relational Knowledge
Distillation", CVPR, https://arxiv.org/abs/1904.05068, equations (3)-(5).

For the embeddings t_1..t_N of a batch (teacher) and s_1..s_N (student),

    psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,   mu = mean of ||t_i - t_j||_2 over the pairs i != j
    L_RKD-D = mean over all (i, j) of  l_delta(psi_D(t_i, t_j), psi_D(s_i, s_j))

with the Huber loss l_delta (delta = 1): 1/2 (x - y)^2 where |x - y| <= 1, else |x - y| - 1/2.
As in the authors' code (github.com/lenscloth/RKD), the mean runs over all N^2 entries, the zero
diagonal included. Dividing by mu makes the loss invariant to scaling either embedding, and
distances are invariant to translating it, so student and teacher embeddings may differ in scale,
offset and even dimension. The paper weights it lambda_D = 25.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[N, D] -> [N, N] Euclidean distances, exactly 0 on the diagonal.

    Computed from explicit differences, not the |a|^2 + |b|^2 - 2ab expansion, which loses
    precision (and translation invariance) when the embeddings are far from the origin. The clamp
    keeps the gradient of the square root finite where two points coincide.
    """
    e = embeddings.float().flatten(1)
    squared = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)
    off_diagonal = 1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype)
    return squared.clamp_min(eps).sqrt() * off_diagonal


def normalized_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """psi_D: pairwise distances divided by their mean over the N(N-1) pairs i != j."""
    d = pairwise_distances(embeddings)
    n = len(d)
    mean = d.sum() / max(n * (n - 1), 1)  # the diagonal is 0, so the sum covers i != j only
    return d / mean.clamp_min(1e-12)


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """L_RKD-D between [N, D_s] student and [N, D_t] teacher embeddings (D_s may differ from D_t).

    The teacher's relations are computed without gradient: they are the target.
    """
    with torch.no_grad():
        target = normalized_distances(teacher_emb)
    return F.smooth_l1_loss(normalized_distances(student_emb), target, beta=1.0)
