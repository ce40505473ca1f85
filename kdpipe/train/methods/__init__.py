"""Distillation methods: each turns (student, frozen teacher, `DistillConfig`) into what the
trainer minimises. Adding one is one module with one `@register_method(...)` line, imported here.

    kd        Hinton et al. 2015: (1 - alpha) CE + alpha T^2 KL(teacher_T || student_T)
    fitnets   Romero et al. 2015: hint stage (guided layer + regressor), then KD
    rkd       Park et al. 2019: CE + 25 RKD-distance + 50 RKD-angle on the pooled embeddings
    at        Zagoruyko & Komodakis 2017: CE + 1000 sum of attention-map losses over the stages
    dkd       Zhao et al. 2022: CE + warm-up * (alpha TCKD + beta NCKD), alpha 1, beta 8, T 4
    dist      Huang et al. 2022: CE + T^2 (beta inter + gamma intra) Pearson relations, 2, 2, T 4
    lskd      Sun et al. 2024: 0.1 CE + 9 T^2 KL on Z-scored logits (paper: T 2)
    scratch   the baseline: CE only
    a+b       a sum of methods, e.g. kd+rkd or dkd+rkd (see `compose`)
"""

from kdpipe.train.methods import (  # noqa: F401  (registers the methods)
    at,
    dist,
    dkd,
    fitnets,
    kd,
    lskd,
    rkd,
    scratch,
)
from kdpipe.train.methods.base import (
    METHODS,
    LossTerm,
    Method,
    MethodContext,
    Outputs,
    Plan,
    Stage,
    register_method,
)
from kdpipe.train.methods.cache import TeacherCache
from kdpipe.train.methods.compose import build_plan, combine, label, needs_teacher, reads, resolve
from kdpipe.train.methods.distill_objective import DistillObjective, TeacherObjective
from kdpipe.train.methods.teacher import Teacher, freeze_teacher

__all__ = [
    "METHODS", "DistillObjective", "LossTerm", "Method", "MethodContext", "Outputs", "Plan",
    "Stage", "Teacher", "TeacherCache", "TeacherObjective", "build_plan", "combine",
    "freeze_teacher", "label", "needs_teacher", "reads", "register_method", "resolve",
]
