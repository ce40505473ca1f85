"""`DistillObjective`: a `Plan`'s terms over one student and one frozen teacher.

    loss = ce_weight * CE(y, student) + sum_i weight_i * term_i(student outputs, teacher outputs)

The teacher runs once per batch for all terms (only when some term reads it), the student once
with the feature taps its terms need. The losses are computed in float32 with autocast off: under
bf16 autocast, relation losses (matrix products of unit vectors) would lose most of their digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import FeatureTaps, feature_layers
from kdpipe.train.methods.base import LossTerm, Outputs
from kdpipe.train.methods.teacher import Teacher
from kdpipe.train.trainer_objective import Objective, StepOutput


class TeacherObjective(Objective):
    """An objective that holds a `Teacher` outside its module tree, yet moves it along.

    `.to(device)`, `.to(memory_format=...)` and the like go through `_apply`; the teacher follows
    them so it always sits on the student's device in the student's memory format.
    """

    teacher: Teacher | None = None

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> TeacherObjective:
        if self.teacher is not None:
            self.teacher.model._apply(fn, recurse)
        return super()._apply(fn, recurse)


def tapped_student(student: nn.Module, taps: Sequence[str]) -> FeatureTaps | None:
    """Feature taps on the student for `taps` (attached for the objective's lifetime), or None."""
    if not taps:
        return None
    layers = feature_layers(student)
    missing = [t for t in taps if t not in layers]
    if missing:
        raise KdpipeError(
            f"the student {type(student).__name__} declares no feature taps {missing} "
            f"(it has {sorted(layers) or 'none'})"
        )
    return FeatureTaps(student, {t: layers[t] for t in taps}).attach()


class DistillObjective(TeacherObjective):
    """Weighted cross-entropy plus the terms of a plan; see the module docstring."""

    def __init__(self, student: nn.Module, teacher: Teacher | None, terms: Sequence[LossTerm],
                 ce_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)
        self.teacher = teacher
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.student_taps = _union(t.student_taps for t in terms)
        self.teacher_taps = _union(t.teacher_taps for t in terms)
        self.taps = tapped_student(student, self.student_taps)
        if terms and teacher is None:
            raise KdpipeError(f"loss terms {[t.name for t in terms]} need a teacher")
        if teacher is not None:
            teacher.require(self.teacher_taps)

    def start_step(self, epochs: float) -> None:
        """The trainer's position in the schedule, in epochs, passed on to every term (see
        `LossTerm.start_step`); called before each training step, outside any compiled graph."""
        for term in self.terms:
            term.start_step(epochs)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        teacher = self.teacher(images, self.teacher_taps) if len(self.terms) else None  # scratch
        if self.taps is None:
            student = Outputs(self.student(images))
        else:
            student = Outputs(*self.taps(images))
        with torch.autocast(images.device.type, enabled=False):
            ce = F.cross_entropy(student.logits.float(), labels,
                                 label_smoothing=self.label_smoothing)
            # torch.compile folds `1.0 * ce` into `ce` itself, and an output that aliases the
            # detached `parts["ce"]` below loses its grad_fn (torch 2.14): scratch, or KD at
            # alpha 0, would not train. So a weight of 1 is not applied at all.
            loss = ce if self.ce_weight == 1.0 else self.ce_weight * ce
            parts = {"ce": ce.detach()}
            for term in self.terms:
                value = term(student, teacher, labels)
                loss = loss + term.weight * value
                parts[term.name] = value.detach()
        return StepOutput(loss, student.logits, parts)


def _union(groups: Any) -> tuple[str, ...]:
    """Tap names in first-seen order, each once."""
    return tuple(dict.fromkeys(name for group in groups for name in group))
