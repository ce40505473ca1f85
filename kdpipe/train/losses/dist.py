"""DIST: Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger Teacher",
NeurIPS, https://arxiv.org/abs/2205.10536, section 3.

Instead of matching the teacher's probabilities exactly (KL), the student matches their relations,
measured by the Pearson correlation rho(u, v) = cov(u, v) / (std(u) std(v)). With the
probabilities Y = softmax(Z / T) of the batch as a [B, C] matrix:

    L_inter = 1 - 1/B sum_i rho(Y^s_i,:, Y^t_i,:)      each sample's distribution over the classes
    L_intra = 1 - 1/C sum_j rho(Y^s_:,j, Y^t_:,j)      each class's probabilities over the batch
    L_DIST  = T^2 * (beta * L_inter + gamma * L_intra)

As in the authors' code (github.com/hunto/image_classification_sota,
`lib/models/losses/dist_kd.py`), rho is the cosine similarity of the mean-centred vectors with
1e-8 added to the product of their norms. Their training loss is CE + 2 * L_DIST with
beta = gamma = 1, T = 1 on ImageNet and T = 4 on CIFAR-100 (`configs/strategies/distill/
dist_cifar.yaml`: `kd: dist_t4`, `kd_loss_weight: 2`), i.e. beta = gamma = 2 here. Correlations
are invariant to shifting and scaling either distribution, so the student need not reproduce a
stronger teacher's confidence, only its ranking and relative spread.
"""

from __future__ import annotations

import torch

EPS = 1e-8  # added to the product of the norms, as in the authors' code


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D], [N, D] -> [N]: the Pearson correlation of each row of `a` with that row of `b`."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
              gamma: float, temperature: float) -> torch.Tensor:
    """`T^2 * (beta * L_inter + gamma * L_intra)` over [B, C] logits, in float32.

    The teacher's logits are fixed targets (pass them detached). L_intra correlates each class
    over the batch, so the loss depends on the batch as a whole, not on each sample alone.
    """
    t = temperature
    y_s = torch.softmax(student_logits.float() / t, dim=1)
    y_t = torch.softmax(teacher_logits.float() / t, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.T, y_t.T).mean()
    return (t * t) * (beta * inter + gamma * intra)
