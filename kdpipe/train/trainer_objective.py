"""What the trainer minimises: an `Objective` wraps the student and any extra trainable parts.

The trainer knows nothing about distillation. A scratch baseline is `CrossEntropyObjective`; each
distillation method (`kdpipe.train.methods`) builds another `Objective` that also owns a frozen
teacher and, e.g., FitNets' regressor. Only `trainable_parameters()` reach the optimizer and only
`state_dict()` (student + extras, never the teacher) reaches the checkpoint.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutput:
    """One training step's loss, the student's logits (for accuracy) and named loss parts to log."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module, abc.ABC):
    """Base class: subclasses set `self.student` and implement `forward(images, labels)`."""

    student: nn.Module

    @abc.abstractmethod
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """The loss on one batch and the student's logits."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates; by default every parameter that requires grad."""
        return (p for p in self.parameters() if p.requires_grad)

    def start_epoch(self, epoch: int) -> None:
        """Hook for objectives that change with the epoch (e.g. cached teacher outputs)."""


class CrossEntropyObjective(Objective):
    """The scratch baseline: cross-entropy with optional label smoothing."""

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.student = student
        self.label_smoothing = label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self.student(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return StepOutput(loss, logits, {"ce": loss.detach()})
