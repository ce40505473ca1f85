"""Entry points that wire data, model and objective into a `Trainer`: what `kdpipe train` calls."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdpipe.data import Dataset, default_data_path, load_dataset, subset
from kdpipe.models import MODELS, create
from kdpipe.train.config import TrainConfig
from kdpipe.train.objective import CrossEntropyObjective
from kdpipe.train.trainer import Trainer, hold_run_folder, seed_everything


def load_training_data(config: TrainConfig) -> Dataset:
    """The dataset a config asks for, subset and split; the shared tarball when none is named."""
    # load_dataset explains how to get the data when there is none
    data = load_dataset(
        config.data or default_data_path(),
        download=config.download,
        cache_dir=config.cache_dir,
        progress=config.progress,
    )
    return subset(
        data,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        val_size=config.val_size,
        seed=config.seed,
    )


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
