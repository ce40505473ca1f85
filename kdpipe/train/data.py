"""The data set a training config asks for: loaded (or the shared tarball), subset and split."""

from __future__ import annotations

from kdpipe.data import Dataset, default_data_path, load_dataset, subset
from kdpipe.train.config import TrainConfig


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
