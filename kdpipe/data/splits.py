"""Stratified subsets and a held-out validation split, deterministic by seed.

Every class keeps its share of the images (largest-remainder rounding), and inside a class the
images are chosen by a permutation that depends only on (seed, split, class). So a smaller limit
picks a subset of what a larger one picks, and changing `limit_train` never moves the validation
images. Chosen images keep their original order.
"""

from __future__ import annotations

import dataclasses

import torch

from kdpipe.data import seeding
from kdpipe.data.dataset import Dataset
from kdpipe.errors import KdpipeError


def allocate(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Split n over classes in proportion to `counts` (largest remainder; ties to lower classes)."""
    total = int(counts.sum())
    base = counts * n // total
    remainder = counts * n % total
    short = n - int(base.sum())
    order = sorted(range(len(counts)), key=lambda c: (-int(remainder[c]), c))
    base[order[:short]] += 1
    return base


def stratified_pick(
    labels: torch.Tensor, n: int, *seed_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(picked, rest): sorted indices of n images stratified by label, and of all the others."""
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    quota = allocate(torch.tensor([len(m) for m in members]), n)
    picked = []
    for c, m, k in zip(classes.tolist(), members, quota.tolist(), strict=True):
        order = torch.randperm(len(m), generator=seeding.generator(*seed_keys, c))
        picked.append(m[order[:k]])
    chosen = torch.cat(picked).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[chosen] = False
    return chosen, torch.nonzero(keep).flatten()


def _check_count(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < minimum):
        raise KdpipeError(f"{name} must be an integer >= {minimum}, got {value!r}")


def subset(
    ds: Dataset,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_size: int = 0,
    seed: int = 0,
) -> Dataset:
    """`ds` with `val_size` train images held out as validation, then at most `limit_train` train
    and `limit_test` test images, all stratified by class and deterministic by `seed`.

    The validation images are drawn from the whole train set before the limit applies, so they
    do not depend on `limit_train`. Limits larger than a split keep the whole split.
    """
    _check_count("limit_train", limit_train, 1)
    _check_count("limit_test", limit_test, 1)
    _check_count("val_size", val_size, 0)
    train_x, train_y = ds.train_images, ds.train_labels
    val_x, val_y = ds.val_images, ds.val_labels
    if val_size:
        if ds.val_labels is not None:
            raise KdpipeError("this data set already has a validation split; pass val_size=0")
        if val_size >= len(train_y):
            raise KdpipeError(f"val_size {val_size} leaves no training images out of "
                              f"{len(train_y)}; lower --val-size")
        val_idx, train_idx = stratified_pick(train_y, val_size, seed, seeding.VAL_SPLIT)
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    if limit_train is not None and limit_train < len(train_y):
        idx, _ = stratified_pick(train_y, limit_train, seed, seeding.TRAIN_SUBSET)
        train_x, train_y = train_x[idx], train_y[idx]
    test_x, test_y = ds.test_images, ds.test_labels
    if limit_test is not None and limit_test < len(test_y):
        idx, _ = stratified_pick(test_y, limit_test, seed, seeding.TEST_SUBSET)
        test_x, test_y = test_x[idx], test_y[idx]
    return dataclasses.replace(ds, train_images=train_x, train_labels=train_y, test_images=test_x,
                               test_labels=test_y, val_images=val_x, val_labels=val_y)
