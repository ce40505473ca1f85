"""Distillation losses, one module per loss, each a pure function (or small module) over explicit
tensors with its paper's equation in the docstring.

    kd_loss(student_logits, teacher_logits, temperature)      Hinton et al. 2015
    hint_loss(regressor_output, teacher_hint), HintRegressor   Romero et al. 2015 (FitNets)
    rkd_distance_loss(student_emb, teacher_emb)               Park et al. 2019 (RKD-D)
    rkd_angle_loss(student_emb, teacher_emb)                  Park et al. 2019 (RKD-A)
    at_loss(student_feature, teacher_feature)                 Zagoruyko & Komodakis 2017 (AT)
    dkd_loss(student_logits, teacher_logits, labels, ...)     Zhao et al. 2022 (DKD)
    dist_loss(student_logits, teacher_logits, ...)            Huang et al. 2022 (DIST)
    standardized_kd_loss(student_logits, teacher_logits, T)   Sun et al. 2024 (LSKD)
"""

from kdpipe.train.losses.at import at_loss
from kdpipe.train.losses.dist import dist_loss
from kdpipe.train.losses.dkd import dkd_loss
from kdpipe.train.losses.hint import hint_loss
from kdpipe.train.losses.kd import kd_loss
from kdpipe.train.losses.lskd import standardized_kd_loss
from kdpipe.train.losses.regressor import HintRegressor
from kdpipe.train.losses.rkd_angle import rkd_angle_loss
from kdpipe.train.losses.rkd_distance import rkd_distance_loss

__all__ = ["HintRegressor", "at_loss", "dist_loss", "dkd_loss", "hint_loss", "kd_loss",
           "rkd_angle_loss", "rkd_distance_loss", "standardized_kd_loss"]
