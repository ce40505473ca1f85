"""ExecuTorch: a `.pte` program lowered to the XNNPACK delegate, run by `executorch.runtime`.

The batch dimension is dynamic up to the largest requested batch size (`torch.export.Dim`):
ExecuTorch plans its memory for that bound, so a larger bound costs memory on the device. int8
is PT2E static quantization with the XNNPACK quantizer (symmetric, per-channel weights), calibrated
on training images. `executorch` is an optional dependency: every import of it is inside a method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

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

INT8_DETAIL = ("PT2E static quantization with the XNNPACK quantizer: int8 symmetric per-channel "
               "weights, int8 activations calibrated on training images")
DELEGATE = "XnnpackBackend"


@register_target
class ExecuTorchTarget(Target):
    name = "executorch"
    suffix = ".pte"
    runtime = "executorch"
    quantizations = {"none": "fp32, XNNPACK", "int8": "PT2E + XNNPACK quantizer, calibrated"}
    unsupported = {"fp16": "kdpipe lowers fp32 or int8 to XNNPACK; use int8, or onnx/coreml "
                           "for fp16"}
    package = "executorch"
    extra = "executorch"
    libraries = ("executorch", "torchao")

    def needs_calibration(self, quantize: str) -> bool:
        return quantize == "int8"

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """One program with a dynamic batch up to max(batch_sizes), or one per batch size when
        the lowered program cannot hold that bound."""
        bound = max(batch_sizes)
        if bound > 1:
            program = _lower(model, quantize, calibration, meta, bound, dynamic=True)
            planned = _planned_batch(program.buffer)
            if planned >= bound:
                exported = self._describe(path, None, bound, quantize)
                _write(program, path)
                return [exported]
            note = (f"the lowered program holds batches of at most {planned}, not {bound}: "
                    "exported one file per batch size")
        else:
            note = ""
        results = []
        for b in sorted(set(batch_sizes)):
            exported = self._describe(batch_variant(path, b), [b], None, quantize)
            exported.notes += [note] if note else []
            _write(_lower(model, quantize, calibration, meta, b, dynamic=False), exported.path)
            results.append(exported)
        return results

    def _describe(self, path: Path, batch_sizes: list[int] | None, bound: int | None,
                  quantize: str) -> Exported:
        return Exported(
            path=path, batch_sizes=batch_sizes, max_batch_size=bound, input_name="input",
            output_name="logits", quantization_detail=INT8_DETAIL if quantize == "int8" else "",
            details={"delegate": DELEGATE,
                     "exporter": "torch.export + executorch.exir.to_edge_transform_and_lower"},
        )

def _lower(model: nn.Module, quantize: str, calibration: Calibration | None,
           meta: ArtifactMetadata, batch: int, dynamic: bool):  # -> ExecutorchProgramManager
    """torch.export (after PT2E int8 when asked) -> XNNPACK-lowered ExecuTorch program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = example_input(meta, 2 if dynamic else batch)
    shapes = ({0: torch.export.Dim("batch", min=1, max=batch)},) if dynamic else None
    if quantize == "int8":
        model = _quantize_int8(model, example, shapes, calibration, batch)
    exported = torch.export.export(model, (example,), dynamic_shapes=shapes)
    with _no_new_shape_guards(exported):
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch()


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


def _planned_batch(buffer: bytes) -> int:
    """The batch size the program's memory plan holds for its input."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(buffer).load_method("forward")
    return int(method.metadata.input_tensor_meta(0).sizes()[0])


def _write(program, path: Path) -> None:  # program: ExecutorchProgramManager
    with open(path, "wb") as f:
        program.write_to_file(f)
