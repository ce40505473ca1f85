"""`kdpipe train`: a model trained from scratch with cross-entropy, the baseline of every method."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdpipe.models import MODELS, create
from kdpipe.train.config import TrainConfig
from kdpipe.train.data import load_training_data
from kdpipe.train.trainer import Trainer, hold_run_folder, seed_everything
from kdpipe.train.trainer_objective import CrossEntropyObjective

__all__ = ["create_student", "load_training_data", "train_baseline"]


def create_student(config: TrainConfig, num_classes: int) -> nn.Module:
    """`config.model` initialised from `config.seed` alone, whatever ran before: a scratch
    baseline and a distilled student of one seed start from the same weights."""
    seed_everything(config.seed)
    return create(config.model, num_classes=num_classes, **config.model_kwargs)


def train_baseline(config: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train `config.model` from scratch with cross-entropy; returns the run's summary."""
    MODELS.get(config.model)  # an unknown model fails before the data is read
    with hold_run_folder(config.out):  # a second run on this folder is refused before any work
        data = load_training_data(config)
        model = create_student(config, len(data.classes))
        objective = CrossEntropyObjective(model, label_smoothing=config.label_smoothing)
        trainer = Trainer(config, objective, data, resume=resume, record={"method": "scratch"})
        trainer.setup()
        return trainer.fit()
