"""Importer of the pytorch_resnet_cifar10 checkpoint layout (Idelbayev 2018, BSD-2-Clause).

Those files are `{'best_prec1': float, 'state_dict': {'module.conv1.weight', ...}}`, saved from a
DataParallel model, without BN `num_batches_tracked` buffers and without any metadata; the
survey's ResNet110 teacher adds `recipe` and `log`. The importer turns one into the kdpipe raw
checkpoint dict, so the checkpoint module reads both through one path.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from kdpipe.errors import KdpipeError
from kdpipe.models.cifar import CIFAR10_CLASSES, CIFAR_INPUT_SHAPE, ZOO_MEAN, ZOO_STD

ZOO_FORMAT = "pytorch_resnet_cifar10"
_BLOCK = re.compile(r"layer([123])\.(\d+)\.conv1\.weight")


def is_zoo_layout(obj: Any) -> bool:
    """True for a zoo file, or a bare state dict of the same ResNet (with or without `module.`)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        return False
    keys = set(_strip_prefix(state))
    return {"conv1.weight", "layer1.0.conv1.weight", "linear.weight"} <= keys


def import_zoo(obj: dict[str, Any]) -> dict[str, Any]:
    """The kdpipe raw dict for a zoo checkpoint: meta, state dict, and the file's other keys."""
    nested = isinstance(obj.get("state_dict"), dict)
    state = _with_batch_counters(_strip_prefix(obj["state_dict"] if nested else obj))
    depth = 6 * _blocks_per_stage(state) + 2
    num_classes = int(state["linear.weight"].shape[0])
    others = {k: v for k, v in obj.items() if k != "state_dict"} if nested else {}
    meta = {
        "model": f"resnet{depth}",
        "model_kwargs": {},
        "num_classes": num_classes,
        "classes": _class_names(num_classes),
        "mean": list(ZOO_MEAN),
        "std": list(ZOO_STD),
        "input_shape": list(CIFAR_INPUT_SHAPE),
        "metrics": {"best_prec1": float(others["best_prec1"])} if "best_prec1" in others else {},
        "config": {"recipe": others["recipe"]} if isinstance(others.get("recipe"), str) else {},
        "format": ZOO_FORMAT,
    }
    return {**others, "kdpipe_checkpoint": 1, "meta": meta, "state_dict": state}


def _class_names(num_classes: int) -> list[str]:
    """The zoo is CIFAR-10; a head of another size has no names to borrow, so it gets numbers."""
    return list(CIFAR10_CLASSES) if num_classes == 10 else [str(i) for i in range(num_classes)]


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop DataParallel's `module.` prefix when every key has it."""
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _blocks_per_stage(state: dict[str, Any]) -> int:
    """n of a ResNet-(6n+2): the blocks of layer1, checked against layer2 and layer3."""
    counts = {stage: 0 for stage in "123"}
    for key in state:
        match = _BLOCK.fullmatch(key)
        if match:
            counts[match[1]] = max(counts[match[1]], int(match[2]) + 1)
    if len(set(counts.values())) != 1:
        raise KdpipeError(
            f"not a CIFAR ResNet of the pytorch_resnet_cifar10 layout: stages have "
            f"{counts['1']}/{counts['2']}/{counts['3']} blocks, the paper's have n/n/n"
        )
    return counts["1"]


def _with_batch_counters(state: dict[str, Any]) -> dict[str, Any]:
    """Add the `num_batches_tracked` buffers PyTorch's BN has and the zoo's files lack (as 0,
    which only matters for BN with momentum=None), keeping the key order of a fresh model."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        out[key] = value
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            out[counter] = state.get(counter, torch.tensor(0, dtype=torch.long))
    return out
