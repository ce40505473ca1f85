"""The pieces every distillation method is made of, and the `METHODS` registry.

A method is a function `(MethodContext) -> Plan` registered with one decorator line:

    @register_method("kd", label="KD (T={temperature:g}, ...)")
    def kd(ctx: MethodContext) -> Plan: ...

A `Plan` is a list of weighted `LossTerm`s, the weight of the label cross-entropy, and optional
`Stage`s that run before the main training (FitNets' hint stage). `kdpipe.train.methods.compose`
adds the plans of `a+b+...` into one; `DistillObjective` turns a plan into the `Objective` the
trainer minimises:  loss = ce_weight * CE(y, student) + sum_i weight_i * term_i.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdpipe.registry import Registry
from kdpipe.train.config import DistillConfig
from kdpipe.train.trainer_objective import Objective

if TYPE_CHECKING:  # the teacher module imports this one
    from kdpipe.train.methods.teacher import Teacher


@dataclass
class Outputs:
    """A network's logits and the tapped features a loss term asked for (tap name -> tensor)."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module, abc.ABC):
    """One named, weighted loss over the student's and the teacher's outputs.

    `student_taps` / `teacher_taps` name the feature taps (see `kdpipe.models.feature_layers`) the
    term reads besides the logits. A term may own trainable parts (e.g. a projection): as a
    submodule of the objective they reach the optimizer and the checkpoint.
    """

    def __init__(self, name: str, weight: float, *, student_taps: tuple[str, ...] = (),
                 teacher_taps: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.name = name
        self.weight = weight
        self.student_taps = student_taps
        self.teacher_taps = teacher_taps

    @abc.abstractmethod
    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of this term on one batch."""

    def start_step(self, epochs: float) -> None:
        """Hook for terms that follow the schedule (DKD's warm-up): called before every training
        step with the position in epochs of the run's schedule, 0 at its first step, fractional
        within an epoch (epoch + batch / batches per epoch)."""


@dataclass
class Stage:
    """A training phase before the main one, run by its own `Trainer` in `out/<name>/` (with its
    own resumable checkpoint); the main phase then starts from the stage's student weights."""

    name: str
    epochs: int
    objective: Objective
    about: str = ""  # one line for the console: what this phase trains, what its numbers mean


@dataclass
class Plan:
    """What one method adds to the loss: terms, the label cross-entropy's weight, prior stages."""

    terms: list[LossTerm] = field(default_factory=list)
    ce_weight: float = 1.0
    stages: list[Stage] = field(default_factory=list)


@dataclass
class MethodContext:
    """What a method may build from: the student (random init), the frozen teacher (None for
    teacher-free methods), the `DistillConfig`, and the input shape [C, H, W]."""

    student: nn.Module
    teacher: Teacher | None
    config: DistillConfig
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Method:
    """A registered method: its plan builder and what the sweep needs to know about it.

    `reads` lists the config fields the method depends on (a sweep cell's name and identity use
    them, so `scratch` with another temperature is the same cell): the `DistillConfig` fields
    whose `option(..., read_by=...)` names the method, in declaration order; `label` is a
    `str.format` template over the config, the row name in result tables.
    """

    name: str
    build: Callable[[MethodContext], Plan]
    label: str = ""
    needs_teacher: bool = True

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(DistillConfig)
                     if self.name in f.metadata.get("read_by", ()))


METHODS: Registry[Method] = Registry("method")


PlanBuilder = Callable[[MethodContext], Plan]


def register_method(name: str, *, label: str = "",
                    needs_teacher: bool = True) -> Callable[[PlanBuilder], PlanBuilder]:
    """Decorator: register a plan builder as method `name` (see the module docstring)."""

    def add(build: PlanBuilder) -> PlanBuilder:
        METHODS.register(name)(Method(name, build, label or name, needs_teacher))
        return build

    return add
