"""ExecuTorch: a `.pte` program lowered to the XNNPACK delegate, run by `executorch.runtime`.

The batch dimension is dynamic up to the largest requested batch size (`torch.export.Dim`):
ExecuTorch plans its memory for that bound, so a larger bound costs memory on the device. int8
is PT2E static quantization with the XNNPACK quantizer (symmetric, per-channel weights), calibrated
on training images. `executorch` is an optional dependency: every import of it is inside a method.

The int8 export of a checkpoint from quantization-aware distillation (`kdpipe distill --qat`)
goes through PT2E's QAT path instead: `prepare_qat_pt2e` with the XNNPACK QAT configuration, the
learned activation ranges loaded into the fake-quant observers they match (same fingerprint on
the checkpoint's probe images, `LearnedQuantization.match`) and frozen there, then
`convert_pt2e`. Weights take XNNPACK's 8-bit per-channel grid [-127, 127] from the weights,
finer than the 7-bit grid the training simulated (`kdpipe.train.qat`); observers that match no
learned range are calibrated on the training images, and the sidecar lists them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdpipe.export.base import (
    Calibration,
    Exported,
    Target,
    batch_variant,
    example_input,
    register_target,
)
from kdpipe.export.metadata import ArtifactMetadata
from kdpipe.models.checkpoint import LearnedQuantization, learned_quantization

INT8_DETAIL = ("PT2E static quantization with the XNNPACK quantizer: int8 symmetric per-channel "
               "weights, int8 activations calibrated on training images")
QAT_INT8_DETAIL = ("PT2E QAT (prepare_qat_pt2e + convert_pt2e) with the XNNPACK quantizer: int8 "
                   "symmetric per-channel 8-bit weights, int8 activations with the ranges learned "
                   "by quantization-aware distillation")
QAT_INT8_SCHEME = {
    "name": "XNNPACK int8, learned activation ranges (QAT)",
    "activations": "int8 asymmetric per tensor",
    "weights": "int8 symmetric per channel, 8 bits [-127, 127], from the BN-folded weights",
    "calibration": "learned (QAT): the moving-average ranges of quantization-aware distillation; "
                   "training images only for observers training did not have "
                   "(details.learned_quantization.calibrated)",
    "trained": "the same activations; weights on the 7-bit grid [-64, 64], coarser than here",
}
DELEGATE = "XnnpackBackend"


@register_target
class ExecuTorchTarget(Target):
    name = "executorch"
    suffix = ".pte"
    runtime = "executorch"
    quantizations = {"none": "fp32, XNNPACK",
                     "int8": "PT2E + XNNPACK quantizer, calibrated or QAT-learned ranges"}
    unsupported = {"fp16": "kdpipe lowers fp32 or int8 to XNNPACK; use int8, or onnx/coreml "
                           "for fp16"}
    package = "executorch"
    extra = "executorch"
    libraries = ("executorch", "torchao")
    learns_int8 = True

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One program with a dynamic batch up to max(batch_sizes), or one per batch size when
        the lowered program cannot hold that bound."""
        bound = max(batch_sizes)
        if bound > 1:
            program, facts = _lower(model, quantize, calibration, meta, bound, dynamic=True)
            planned = _planned_batch(program.buffer)
            if planned >= bound:
                exported = self._describe(path, None, bound, quantize, facts)
                _write(program, path)
                return [exported]
            note = (f"the lowered program holds batches of at most {planned}, not {bound}: "
                    "exported one file per batch size")
        else:
            note = ""
        results = []
        for b in sorted(set(batch_sizes)):
            program, facts = _lower(model, quantize, calibration, meta, b, dynamic=False)
            exported = self._describe(batch_variant(path, b), [b], None, quantize, facts)
            exported.notes += [note] if note else []
            _write(program, exported.path)
            results.append(exported)
        return results

    def _describe(self, path: Path, batch_sizes: list[int] | None, bound: int | None,
                  quantize: str, facts: dict[str, Any]) -> Exported:
        """`facts`: what `_lower` reports of a learned quantization (empty otherwise)."""
        learned = bool(facts)
        detail = (QAT_INT8_DETAIL if learned else INT8_DETAIL) if quantize == "int8" else ""
        return Exported(
            path=path, batch_sizes=batch_sizes, max_batch_size=bound, input_name="input",
            output_name="logits", quantization_detail=detail,
            details={"delegate": DELEGATE,
                     "exporter": "torch.export + executorch.exir.to_edge_transform_and_lower",
                     **({"int8_scheme": QAT_INT8_SCHEME, **facts} if learned else {})},
        )

def _lower(model: nn.Module, quantize: str, calibration: Calibration | None,
           meta: ArtifactMetadata, batch: int,
           dynamic: bool) -> tuple[Any, dict[str, Any]]:  # (ExecutorchProgramManager, facts)
    """torch.export (after PT2E int8 when asked) -> XNNPACK-lowered ExecuTorch program, and the
    sidecar's account of a learned quantization (empty otherwise)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = example_input(meta, 2 if dynamic else batch)
    shapes = ({0: torch.export.Dim("batch", min=1, max=batch)},) if dynamic else None
    facts: dict[str, Any] = {}
    if quantize == "int8":
        learned = learned_quantization(model)
        if learned is None:
            model = _quantize_int8(model, example, shapes, calibration, batch)
        else:
            model, facts = _quantize_int8_learned(model, example, shapes, calibration, batch,
                                                  learned)
    exported = torch.export.export(model, (example,), dynamic_shapes=shapes)
    with _no_new_shape_guards(exported):
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch(), facts


@contextlib.contextmanager
def _no_new_shape_guards(exported: torch.export.ExportedProgram) -> Iterator[None]:
    """Keep XNNPACK's passes from narrowing the dynamic batch range.

    Its channels-last pass re-runs convolutions on fake tensors, and PyTorch's fake convolution
    asks `batch < 16` (a cuDNN/oneDNN backend heuristic) of the example batch, which records the
    guard `batch <= 15` and shrinks the planned memory to 15 images. The answer only picks a
    memory format for the fake output, so guards are suppressed during lowering; the parity check
    then runs every requested batch size for real, and `_planned_batch` verifies the bound.
    """
    env = None
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs:
            size = node.meta["val"].shape[0]
            env = size.node.shape_env if isinstance(size, torch.SymInt) else None
            break
    with env.suppress_guards() if env is not None else contextlib.nullcontext():
        yield


def _quantize_int8(model: nn.Module, example: torch.Tensor, shapes: tuple | None,
                   calibration: Calibration | None, batch: int) -> nn.Module:
    """PT2E: annotate with the XNNPACK quantizer, observe calibration batches, convert."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None:
        raise ValueError("int8 ExecuTorch export needs calibration images")
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_global(config)
    graph = torch.export.export(model, (example,), dynamic_shapes=shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        # The exported graph checks the batch bound, so calibrate in batches it accepts.
        for images in calibration.batches(batch):
            prepared(torch.from_numpy(images))
    return convert_pt2e(prepared)


def _quantize_int8_learned(model: nn.Module, example: torch.Tensor, shapes: tuple | None,
                           calibration: Calibration | None, batch: int,
                           learned: LearnedQuantization) -> tuple[nn.Module, dict[str, Any]]:
    """PT2E QAT: prepare with the XNNPACK QAT configuration, load and freeze the learned ranges
    where they match, calibrate the other observers and the weights' on training images (fake
    quantization on, as the artifact will compute), convert."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    if calibration is None:
        raise ValueError("int8 ExecuTorch export needs calibration images")
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    quantizer = XNNPACKQuantizer().set_global(config)
    graph = torch.export.export(model, (example,), dynamic_shapes=shapes).module()
    # prepare_qat_pt2e puts BN in training mode; in eval mode it uses the running statistics,
    # as the QAT epochs did (kdpipe.train.qat), and calibration does not move them.
    prepared = move_exported_model_to_eval(prepare_qat_pt2e(graph, quantizer))
    facts = _load_learned(prepared, learned, batch)
    with torch.no_grad():
        for images in calibration.batches(batch):
            prepared(torch.from_numpy(images))
    return convert_pt2e(prepared), facts


@torch.no_grad()
def _load_learned(prepared: nn.Module, learned: LearnedQuantization,
                  batch: int) -> dict[str, Any]:
    """Set each activation fake-quant that quantizes a learned tensor to its learned range and
    stop its observer; returns the counts and the names left to calibration."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    fake_quants = {name: m for name, m in prepared.named_modules()
                   if isinstance(m, FakeQuantizeBase)}
    activations = {name: m for name, m in fake_quants.items()
                   if m.qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric)}
    calls: dict[str, torch.Tensor] = {}  # a module's first input of one forward pass

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:  # None: input unchanged
            calls.setdefault(name, args[0].detach().clone())
        return hook

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in activations.items()]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in activations}
    for m in fake_quants.values():  # an FP32 pass: every fake quantization and observer off
        m.disable_fake_quant()
        m.disable_observer()
    try:
        for images in _probe_batches(learned.probe, batch):
            calls.clear()
            prepared(images)
            for name, value in calls.items():
                inputs[name].append(value)
    finally:
        for hook in hooks:
            hook.remove()
        for m in fake_quants.values():
            m.enable_fake_quant()
            m.enable_observer()
    matched = learned.match({name: torch.cat(values) for name, values in inputs.items()
                             if values})
    for name, act in matched.items():
        module = activations[name]
        observer = module.activation_post_process
        if (module.quant_min, module.quant_max) != (act.quant_min, act.quant_max):
            continue  # another grid: calibrate it rather than reinterpret the learned one
        observer.min_val.fill_(act.min_val)  # what convert_pt2e derives scale and zero point from
        observer.max_val.fill_(act.max_val)
        module.scale.fill_(act.scale)
        module.zero_point.fill_(act.zero_point)
        module.disable_observer()
    calibrated = sorted(name for name, m in activations.items() if m.observer_enabled.item())
    return {"learned_quantization": {"learned": len(activations) - len(calibrated),
                                     "calibrated": calibrated, "trained_scheme": learned.scheme}}


def _probe_batches(probe: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """The probe images in batches of `batch`, the size a program with a static batch takes:
    repeated a whole number of times (lcm images), which leaves their per-channel moments, the
    fingerprints, as they are."""
    copies = batch // math.gcd(len(probe), batch)
    return list(probe.repeat(copies, 1, 1, 1).split(batch))


def _planned_batch(buffer: bytes) -> int:
    """The batch size the program's memory plan holds for its input."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(buffer).load_method("forward")
    return int(method.metadata.input_tensor_meta(0).sizes()[0])


def _write(program, path: Path) -> None:  # program: ExecutorchProgramManager
    with open(path, "wb") as f:
        program.write_to_file(f)
