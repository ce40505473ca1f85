"""Quantization-aware distillation (`kdpipe distill --qat`): the student trains as its INT8 export
computes, against the FP32 teacher, starting from a trained FP32 student (`--init-checkpoint`).

The student is captured with `torch.export` and prepared by torchao's PT2E `prepare_qat_pt2e` with
ExecuTorch's `XNNPACKQuantizer`, which puts fake quantization (round to the int8 grid and back,
straight-through gradients) where the INT8 exports quantize (`SCHEME`):

    weights      int8 symmetric per output channel on the 7-bit grid [-64, 64], scale =
                 max|w| / 64, from the current weights at every step: ONNX Runtime's U8S8
                 `reduce_range` weights (`kdpipe.export.onnx.INT8_SCHEME`), value for value
    activations  int8 asymmetric per tensor, the same grid as ONNX Runtime's uint8 ones (zero
                 point + 128); range = a moving average (0.01 per step) of each batch's min/max,
                 at the input and after each conv(+BN)(+ReLU), add(+ReLU), pad and linear

Mismatches with the exports: ExecuTorch's XNNPACK int8 keeps 8-bit weights ([-127, 127]), a
finer grid than the 7-bit one trained here, so its weights round less than in training; both
exports also quantize the biases (int32, negligible), and a tensor an export quantizes where
training had no fake quantization gets a calibrated range (its sidecar lists them). Activation
ranges start from the first batch's min/max, so a run of a few steps keeps a one-batch range.

BatchNorm and dropout: the prepared graph is moved to eval mode (`move_exported_model_to_eval`)
once, before training, and never back, so BN normalizes with the init checkpoint's running
statistics, which never move (torchao's QAT recipe freezes BN statistics for the last QAT epochs,
and these are such epochs), and dropout is off. torchao's QAT conv-BN pattern then computes
exactly the folded convolution the exports run, its weight fake-quantized after folding.
With BN frozen and fake quantization on, a step moves the student more than in FP32 training,
where BN renormalizes each batch: from the CE-trained zoo ResNet20 against the ResNet110 teacher
(logits 4x flatter than the student's), 4 KD steps at lr 1e-3 changed the weights 4x more than
the same steps without --qat and took FP32 top-1 from 79% to 53% (200 test images); at lr 1e-4
it stayed at 79%. Hence the small lr the `--qat` help suggests.

The graph shares its parameters with the eager FP32 student: the checkpoint stores that student's
ordinary state dict plus the learned activation ranges (`LearnedQuantization`, in the entry
`kdpipe.models.checkpoint.QAT_KEY`), so it loads as an FP32 model everywhere, and `kdpipe export
--quantize int8` uses the ranges instead of calibrating. The trainer reaches all this through
`checkpoint_parts` and `restore_student` only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import FeatureTaps, feature_layers
from kdpipe.models.checkpoint import QAT_KEY, ActivationRange, LearnedQuantization, fingerprint

__all__ = ["SCHEME", "QatStudent", "checkpoint_parts", "require_qat_libraries",
           "restore_student"]

WEIGHT_QMIN, WEIGHT_QMAX = -64, 64  # ONNX Runtime's int8 reduce_range (quant_utils)
PROBE_IMAGES = 2  # images the stored fingerprints are computed on (`LearnedQuantization.probe`)
SCHEME = {
    "name": "PT2E QAT, XNNPACK quantizer, 7-bit weights",
    "weights": f"int8 symmetric per output channel, grid [{WEIGHT_QMIN}, {WEIGHT_QMAX}] (7 bits, "
               "ONNX Runtime's reduce_range), range from the current (BN-folded) weights",
    "activations": "int8 asymmetric per tensor (= uint8 with zero point + 128), moving-average "
                   "min/max (0.01 per step) observed during training",
    "batch_norm": "frozen running statistics (eval-mode graph), folded into the convolutions",
    "library": "torchao.quantization.pt2e.prepare_qat_pt2e + executorch XNNPACKQuantizer",
}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def require_qat_libraries() -> None:
    """A one-line `KdpipeError` where torchao or ExecuTorch's XNNPACK quantizer is missing."""
    missing = [name for name in ("torchao", "executorch") if not _installed(name)]
    if missing:
        raise KdpipeError(f"--qat needs {' and '.join(missing)} (torchao's PT2E QAT with "
                          "ExecuTorch's XNNPACK quantizer): pip install 'kdpipe[executorch]'")


def qat_quantizer() -> Any:  # XNNPACKQuantizer
    """The XNNPACK QAT configuration with ONNX Runtime's 7-bit weight grid (see `SCHEME`)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import MovingAveragePerChannelMinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True,
                                               weight_qmin=WEIGHT_QMIN, weight_qmax=WEIGHT_QMAX)
    # averaging_constant 1: the weight range is that of the weights of this step, not a moving
    # average of past ones, so the trained grid is the one an exporter computes from the weights.
    weights = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0, eps=2**-12)
    config = dataclasses.replace(config, weight=dataclasses.replace(
        config.weight, observer_or_fake_quant_ctr=weights))
    return XNNPACKQuantizer().set_global(config)


class _WithFeatures(nn.Module):
    """The student returning its logits and every declared feature tap: forward hooks do not
    survive `torch.export`, so the taps become outputs of the exported graph."""

    def __init__(self, student: nn.Module, layers: dict[str, str]) -> None:
        super().__init__()
        self.student = student
        self.layers = layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.layers:
            return (self.student(x),)
        logits, features = FeatureTaps(self.student, self.layers)(x)
        return (logits, *features.values())


class QatStudent(nn.Module):
    """`student` as a fake-quantized PT2E graph sharing its parameters (see the module docstring).

    Called like the student (normalized images -> logits). Its feature taps have the student's
    names, on identity modules that receive the graph's tap outputs, so `FeatureTaps` and every
    method work unchanged. `train()` and `eval()` switch only the activation observers: ranges
    move while training, never while evaluating.
    """

    def __init__(self, student: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_shape: Sequence[int]) -> None:
        super().__init__()
        require_qat_libraries()
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        student.eval()  # captured as it infers: dropout off (BN: see below)
        self.student = student
        layers = feature_layers(student)
        self.tap_names = list(layers)
        example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(_WithFeatures(student, layers), (example,),
                                      dynamic_shapes=({0: batch},))
        # prepare_qat_pt2e rewrites every conv-BN into its QAT pattern with BN in training mode;
        # moved to eval mode once and never back, BN keeps the checkpoint's running statistics
        # (frozen) and dropout stays off for all the QAT epochs.
        self.graph = move_exported_model_to_eval(prepare_qat_pt2e(program.module(),
                                                                  qat_quantizer()))
        self.taps = nn.ModuleDict({name: nn.Identity() for name in self.tap_names})
        self.feature_layers = {name: f"taps.{name}" for name in self.tap_names}
        # Buffers for the device moves, outside the state dict (nothing to restore).
        self.register_buffer("mean", _channels(mean), persistent=False)
        self.register_buffer("std", _channels(std), persistent=False)
        probe = torch.rand(PROBE_IMAGES, *input_shape, generator=torch.Generator().manual_seed(0))
        self.register_buffer("probe", probe, persistent=False)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 under any autocast: the fake quantization is the int8 arithmetic being
        # simulated, bf16 rounding on top of it would be simulated by nothing in the export.
        with torch.autocast(x.device.type, enabled=False):
            logits, *features = self.graph(x.float())
        for name, value in zip(self.tap_names, features, strict=True):
            self.taps[name](value)
        return logits

    def train(self, mode: bool = True) -> QatStudent:
        # Not nn.Module.train: an exported graph refuses train()/eval() (its BN and dropout are
        # fixed in eval mode on purpose). Weight observers stay on: they read the weights.
        self.training = mode
        for _, fake_quant in self._activation_fake_quants():
            fake_quant.enable_observer(mode)
        return self

    def _activation_fake_quants(self) -> Iterator[tuple[str, nn.Module]]:
        """The graph's activation fake-quant modules (per tensor; the weights' are per channel)."""
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

        for name, module in self.graph.named_modules():
            if isinstance(module, FakeQuantizeBase) and module.qscheme in (
                    torch.per_tensor_affine, torch.per_tensor_symmetric):
                yield name, module

    @torch.no_grad()
    def learned(self) -> LearnedQuantization:
        """The activation ranges as they are now, with the fingerprints of the FP32 activations
        they quantize on the probe images (every fake quantization off for that one pass)."""
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

        fake_quants = [m for m in self.graph.modules() if isinstance(m, FakeQuantizeBase)]
        flags = [(m.fake_quant_enabled.clone(), m.observer_enabled.clone()) for m in fake_quants]
        activations = dict(self._activation_fake_quants())
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in activations}

        def keep(name: str) -> Any:
            def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:  # None: input unchanged
                seen[name].append(fingerprint(args[0]))
            return hook

        hooks = [module.register_forward_pre_hook(keep(name))
                 for name, module in activations.items()]
        try:
            for module in fake_quants:
                module.disable_fake_quant()
                module.disable_observer()
            self.graph((self.probe - self.mean) / self.std)
        finally:
            for hook in hooks:
                hook.remove()
            for module, (fake_quant, observer) in zip(fake_quants, flags, strict=True):
                module.fake_quant_enabled.copy_(fake_quant)
                module.observer_enabled.copy_(observer)
        return LearnedQuantization(scheme=dict(SCHEME), probe=self.probe.cpu().clone(),
                                   activations=[_range(name, module, seen[name])
                                                for name, module in activations.items()])

    @torch.no_grad()
    def load_learned(self, learned: LearnedQuantization) -> None:
        """Restore the activation ranges of `learned` (from this run's last.pt) by module name."""
        activations = dict(self._activation_fake_quants())
        names = {a.name for a in learned.activations}
        if names != set(activations):
            raise KdpipeError(
                "the fake-quant state in last.pt does not fit this student's QAT graph (was the "
                "run started with another torch or torchao?); start the --qat run again in a new "
                "--out")
        for act in learned.activations:
            module = activations[act.name]
            module.scale.fill_(act.scale)
            module.zero_point.fill_(act.zero_point)
            module.activation_post_process.min_val.fill_(act.min_val)
            module.activation_post_process.max_val.fill_(act.max_val)


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)


def _range(name: str, module: Any, fingerprints: list[torch.Tensor]) -> ActivationRange:
    observer = module.activation_post_process
    return ActivationRange(
        name=name, scale=float(module.scale), zero_point=int(module.zero_point),
        quant_min=int(module.quant_min), quant_max=int(module.quant_max),
        min_val=float(observer.min_val), max_val=float(observer.max_val),
        fingerprints=[f for f in fingerprints if f is not None])


def checkpoint_parts(student: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """What a checkpoint stores of `student`: the FP32 module whose weights are saved, and the
    entries beside them (a `QatStudent`'s learned ranges; nothing for any other student)."""
    if isinstance(student, QatStudent):
        return student.student, {QAT_KEY: student.learned().to_entry()}
    return student, {}


def restore_student(student: nn.Module, raw: dict[str, Any]) -> None:
    """Load a checkpoint's raw dict (`read_checkpoint`) into `student`: the inverse of
    `checkpoint_parts`."""
    if not isinstance(student, QatStudent):
        student.load_state_dict(raw["state_dict"])
        return
    student.student.load_state_dict(raw["state_dict"])  # in place: the graph shares the tensors
    student.load_learned(LearnedQuantization.from_entry(raw.get(QAT_KEY)))
