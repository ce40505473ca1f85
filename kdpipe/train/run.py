"""Entry points that wire data, model and objective into a `Trainer`: what `kdpipe train` calls."""

from __future__ import annotations

from typing import Any

from kdpipe.data import Dataset, default_data_path, load_dataset, subset
from kdpipe.errors import KdpipeError
from kdpipe.models import MODELS, create
from kdpipe.train.config import TrainConfig
from kdpipe.train.objective import CrossEntropyObjective
from kdpipe.train.trainer import Trainer

NO_DATA = (
    "no CIFAR-10 data given: pass --data PATH (an ImageFolder tree, a .tar.gz of one such as "
    "../shared/datasets/cifar10-images.tar.gz, or a folder for cifar-10-batches-py) and add "
    "--download to let torchvision fetch CIFAR-10 there"
)


def load_training_data(config: TrainConfig) -> Dataset:
    """The dataset a config asks for, subset and split; the shared tarball when none is named."""
    path = config.data or default_data_path()
    if path is None and not config.download:
        raise KdpipeError(NO_DATA)
    data = load_dataset(
        path, download=config.download, cache_dir=config.cache_dir, progress=config.progress
    )
    return subset(
        data,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        val_size=config.val_size,
        seed=config.seed,
    )


def train_baseline(config: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train `config.model` from scratch with cross-entropy; returns the run's summary."""
    MODELS.get(config.model)  # an unknown model fails before the data is read
    data = load_training_data(config)
    model = create(config.model, num_classes=len(data.classes), **config.model_kwargs)
    objective = CrossEntropyObjective(model, label_smoothing=config.label_smoothing)
    trainer = Trainer(config, objective, data, resume=resume, record={"method": "scratch"})
    trainer.setup()
    return trainer.fit()
