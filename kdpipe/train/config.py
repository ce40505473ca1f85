"""The training configs: `TrainConfig` (`kdpipe train`) and `DistillConfig` (`kdpipe distill`),
each one dataclass filled by flags and config files alike."""

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
    # data (a result: the path is all kdpipe knows of the data's identity before reading it)
    data: str | None = option(
        None,
        "ImageFolder tree, .tar(.gz) of one, or cifar-10-batches-py "
        "folder [default: ../shared/datasets/cifar10-images.tar.gz if present]",
    )
    download: bool = option(False, "let torchvision download CIFAR-10 into --data (needs internet)")
    cache_dir: str | None = option(
        None, "uint8 image cache [default: $KDPIPE_CACHE or ~/.cache/kdpipe]", result=False
    )
    limit_train: int | None = option(None, "train on a stratified subset of N images")
    limit_test: int | None = option(None, "evaluate on a stratified subset of N test images")
    val_size: int = option(0, "hold out N train images (stratified) as a validation set")
    loader: Literal["tensor", "reference"] = option(
        "tensor", "tensor: in-memory batched augmentation; reference: torchvision PIL DataLoader"
    )
    num_workers: int = option(2, "DataLoader workers (reference loader only)", result=False)
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
    device: str = option("auto", "auto | cpu | cuda | cuda:N", result=False)
    channels_last: bool = option(
        True, "channels_last memory format (x1.26 on CPU, tensor cores on GPU)"
    )
    amp: bool = option(
        True, "bf16 autocast where the device computes bf16 natively: CUDA, and CPUs with AMX or "
        "AVX512-BF16 (x1.9 per training step on an AMX CPU); fp32 elsewhere or with --no-amp"
    )
    compile: bool = option(False, "torch.compile the training step (x1.46 on CPU after warm-up)")
    threads: int | None = option(None, "torch intra-op threads [default: PyTorch's choice]",
                                     result=False)
    out: str = option("runs/train", "run folder for checkpoints, metrics and summary",
                      result=False)
    progress: bool = option(True, "show a progress bar", result=False)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class DistillConfig(TrainConfig):
    """A `TrainConfig` plus the teacher and the distillation method. `--student` names the student
    (it sets `model`, which a distill run otherwise reads as the student too).

    Each method's options are declared here with `read_by=` naming the methods that read them
    (`kdpipe.train.methods.Method.reads`), not in the methods' modules: this module must import
    without PyTorch, so that `kdpipe --help` stays fast. A sweep cell's name lists the options
    its method reads in the order declared here, which is why the shared `temperature` and
    `alpha` come after every method's own options (`fitnets-middle-h3-T4-a0.9`).
    """

    student: str | None = option(None, "student model, trained from random initialization "
                                 "unless --init-checkpoint (sets --model; see `kdpipe list`)",
                                 short="")
    teacher: str | None = option(None, "teacher model name, checked against the checkpoint "
                                 "(default: read from the checkpoint)")
    teacher_checkpoint: str | None = option(None, "teacher weights: a kdpipe checkpoint or a "
                                            "pytorch_resnet_cifar10 file")
    method: str = option("kd", "kd | fitnets | rkd | at | dkd | dist | lskd | scratch, or a sum "
                         "such as kd+rkd (see `kdpipe list`)")
    hint_layer: Literal["middle", "final"] = option(
        "middle", "FitNets guided/hint layer: the middle or the final stage of each network",
        read_by=("fitnets",), short="")
    hint_epochs: int = option(5, "FitNets stage 1 (hint training) epochs, before the KD epochs",
                              read_by=("fitnets",), short="h")
    rkd_distance_weight: float = option(25.0, "RKD distance weight lambda_D (Park et al. 2019)",
                                        read_by=("rkd",), short="d")
    rkd_angle_weight: float = option(50.0, "RKD angle weight lambda_A (Park et al. 2019)",
                                     read_by=("rkd",), short="ang")
    at_weight: float = option(1000.0, "attention transfer weight beta on the sum of the stages' "
                              "attention losses (Zagoruyko & Komodakis 2017, CIFAR code: 1e3)",
                              read_by=("at",), short="w")
    dkd_alpha: float = option(1.0, "DKD target-class (TCKD) weight alpha (Zhao et al. 2022)",
                              read_by=("dkd",), short="a")
    dkd_beta: float = option(8.0, "DKD non-target-class (NCKD) weight beta (Zhao et al. 2022, "
                             "CIFAR-100: 8; their code uses 2 for ResNet56/110 teachers)",
                             read_by=("dkd",), short="b")
    dkd_warmup_epochs: float = option(20.0, "epochs over which the DKD weight ramps linearly from "
                                      "0 to 1, per step (Zhao et al. 2022: 20 of 240 epochs)",
                                      read_by=("dkd",), short="wu")
    dist_beta: float = option(2.0, "DIST inter-class (per sample) relation weight beta (Huang et "
                              "al. 2022: 1, times the code's DIST loss weight 2)",
                              read_by=("dist",),
                              short="b")
    dist_gamma: float = option(2.0, "DIST intra-class (per class over the batch) relation weight "
                               "gamma (Huang et al. 2022: 1, times the code's loss weight 2)",
                               read_by=("dist",), short="g")
    lskd_weight: float = option(9.0, "weight of the logit-standardized KD term (Sun et al. 2024, "
                                "CIFAR-100: 9)", read_by=("lskd",), short="w")
    lskd_ce_weight: float = option(0.1, "lskd's cross-entropy weight (Sun et al. 2024: 0.1)",
                                   read_by=("lskd",), short="ce")
    temperature: float = option(4.0, "softmax temperature T of kd and FitNets' KD stage (Hinton "
                                "et al. 2015), dkd and dist (4 in their papers' CIFAR settings "
                                "too) and lskd (its paper uses 2: pass --temperature 2)",
                                read_by=("kd", "fitnets", "dkd", "dist", "lskd"), short="T")
    alpha: float = option(0.9, "KD weight: loss = (1 - alpha) * CE(labels, student) + alpha * "
                          "T^2 * KL(teacher_T || student_T); alpha = 0 is plain cross-entropy",
                          read_by=("kd", "fitnets"), short="a")
    init_checkpoint: str | None = option(None, "start the student from this checkpoint's weights "
                                         "(a trained FP32 student, e.g. runs/kd/model.pt) "
                                         "instead of random initialization; required with --qat")
    qat: bool = option(False, "quantization-aware distillation: train the student fake-quantized "
                       "as its INT8 export computes (int8 per-channel 7-bit weights, int8 "
                       "activations; frozen BN), from --init-checkpoint, for the last epochs: "
                       "e.g. --epochs 1 --lr 0.0001 --warmup-epochs 0 (and --dkd-warmup-epochs 0 "
                       "with dkd: warm-ups are for random weights); `kdpipe export "
                       "--quantize int8` then uses the learned ranges (needs kdpipe[executorch])")
    # Outputs are keyed by content (`TeacherCache`): a cache changes the speed, never a result.
    teacher_cache: str | None = option(None, "folder keeping the teacher's logits and embeddings "
                                       "per augmented batch, so runs with the same seed and data "
                                       "share them (worth it on CPU)", result=False)
    out: str = option("runs/distill", "run folder for checkpoints, metrics and summary",
                      result=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qat and not self.init_checkpoint:
            raise KdpipeError("--qat needs --init-checkpoint PATH: the trained FP32 student to "
                              "fine-tune fake-quantized (e.g. runs/kd/model.pt)")


@dataclass
class EvalConfig:
    """`kdpipe eval`: a checkpoint's top-1 on a data set's test split."""

    data: str | None = option(None, "data set (as for `kdpipe train`)")
    limit_test: int | None = option(None, "stratified subset of N test images")
    device: str = option("auto", "auto | cpu | cuda")
    download: bool = option(False, "let torchvision download CIFAR-10")
    cache_dir: str | None = option(
        None, "uint8 image cache [default: $KDPIPE_CACHE or ~/.cache/kdpipe]")
