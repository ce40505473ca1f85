"""The trainer's configuration: one dataclass filled by `kdpipe train` flags and config files."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kdpipe.config import option
from kdpipe.errors import KdpipeError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

# Option -> (is the value valid, given the whole config?, the valid range in words). One table for
# `TrainConfig` and its subclasses (`DistillConfig`'s alpha and temperature too), checked whenever
# a config is built, so a flag or a file key out of range is refused before any data is read.
RANGES: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "epochs": (lambda v, c: v >= 1, "at least 1"),
    "batch_size": (lambda v, c: v >= 1, "at least 1"),
    "lr": (lambda v, c: v >= 0, "0 or more"),
    # Equal to --epochs is allowed: `--epochs 1` with the default 1-epoch warm-up is common.
    "warmup_epochs": (lambda v, c: 0 <= v <= c.epochs, "from 0 to --epochs ({epochs})"),
    "threads": (lambda v, c: v is None or v >= 1, "at least 1 (or unset: PyTorch's choice)"),
    "device": (lambda v, c: isinstance(v, str) and _DEVICE.fullmatch(v) is not None,
               "auto, cpu, cuda or cuda:N"),
    "alpha": (lambda v, c: 0 <= v <= 1, "from 0 to 1"),
    "temperature": (lambda v, c: v > 0, "above 0"),
}


def check_ranges(config: Any) -> None:
    """Raise a `KdpipeError` for the first field of `config` outside its range in `RANGES`."""
    for f in dataclasses.fields(config):
        rule = RANGES.get(f.name)
        value = getattr(config, f.name)
        if rule is not None and not rule[0](value, config):
            flag = "--" + f.name.replace("_", "-")
            allowed = rule[1].format_map(vars(config))
            raise KdpipeError(f"{flag} {value!r} is out of range: it must be {allowed}")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Written next to every checkpoint as `config.json`.

    Defaults follow the CIFAR ResNet recipe of He et al. 2016 (sec. 4.2: SGD, momentum 0.9,
    batch 128, lr 0.1) with a cosine schedule and warm-up, which reaches the paper's accuracy in
    fewer epochs than its step schedule.
    """

    model: str = option("resnet20", "model to train (see `kdpipe list`)")
    model_kwargs: dict = option(
        help="extra model arguments, e.g. {width_mult = 0.5} (config only)", factory=dict
    )
    # data
    data: str | None = option(
        None,
        "ImageFolder tree, .tar(.gz) of one, or cifar-10-batches-py "
        "folder [default: ../shared/datasets/cifar10-images.tar.gz if present]",
    )
    download: bool = option(False, "let torchvision download CIFAR-10 into --data (needs internet)")
    cache_dir: str | None = option(
        None, "uint8 image cache [default: $KDPIPE_CACHE or ~/.cache/kdpipe]"
    )
    limit_train: int | None = option(None, "train on a stratified subset of N images")
    limit_test: int | None = option(None, "evaluate on a stratified subset of N test images")
    val_size: int = option(0, "hold out N train images (stratified) as a validation set")
    loader: Literal["tensor", "reference"] = option(
        "tensor", "tensor: in-memory batched augmentation; reference: torchvision PIL DataLoader"
    )
    num_workers: int = option(2, "DataLoader workers (reference loader only)")
    # optimisation
    epochs: int = option(30, "training epochs")
    batch_size: int = option(128, "images per step and process")
    lr: float = option(0.1, "peak learning rate (0.1 for batch 128, He et al. 2016)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(
        5e-4, "L2 weight decay (He et al. use 1e-4 with 160 epochs; 5e-4 suits short schedules)"
    )
    schedule: Literal["cosine", "multistep"] = option("cosine", "cosine | multistep")
    milestones: list[float] = option(
        help="multistep decay points as fractions of the run", factory=lambda: [0.5, 0.75]
    )
    gamma: float = option(0.1, "multistep decay factor")
    warmup_epochs: float = option(1.0, "linear warm-up from lr/10, in epochs")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy (0 = off)")
    # execution
    seed: int = option(0, "seed for initialisation, shuffling and augmentation")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    channels_last: bool = option(
        True, "channels_last memory format (x1.26 on CPU, tensor cores on GPU)"
    )
    amp: bool = option(
        True, "bf16 autocast where the device computes bf16 natively: CUDA, and CPUs with AMX or "
        "AVX512-BF16 (x1.9 per training step on an AMX CPU); fp32 elsewhere or with --no-amp"
    )
    compile: bool = option(False, "torch.compile the training step (x1.46 on CPU after warm-up)")
    threads: int | None = option(None, "torch intra-op threads [default: PyTorch's choice]")
    out: str = option("runs/train", "run folder for checkpoints, metrics and summary")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_ranges(self)
