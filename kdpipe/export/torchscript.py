"""TorchScript: a traced and frozen `.pt` archive that `torch.jit.load` runs without kdpipe.

fp32 only. The metadata rides inside as `_extra_files["kdpipe.json"]`. PyTorch marks TorchScript
deprecated (in favour of torch.export: the `executorch` target); it stays here because apps on
LibTorch / PyTorch Mobile still load it, and the metadata notes say so.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdpipe.export.base import (
    Calibration,
    Exported,
    Target,
    example_input,
    register_target,
    with_io,
)
from kdpipe.export.metadata import TORCHSCRIPT_EXTRA, ArtifactMetadata

DEPRECATION_NOTE = ("TorchScript is deprecated in PyTorch 2.x; prefer the executorch or onnx "
                    "artifact for new apps")


@register_target
class TorchScriptTarget(Target):
    name = "torchscript"
    suffix = ".pt"
    runtime = "torchscript"
    quantizations = {"none": "fp32"}
    unsupported = {
        "fp16": "float16 convolutions are slow or missing on CPU in LibTorch; use onnx or coreml",
        "int8": "TorchScript int8 needs the deprecated eager/FX torch.ao flow; use onnx or "
                "executorch",
    }

    def export(self, model: nn.Module, meta: ArtifactMetadata, quantize: str,
               calibration: Calibration | None, path: Path,
               batch_sizes: Sequence[int]) -> list[Exported]:
        """Trace (the CIFAR nets have no data-dependent control flow), freeze, save."""
        exported = Exported(path=path, batch_sizes=None, input_name="input", output_name="logits",
                            details={"exporter": "torch.jit.trace + torch.jit.freeze"},
                            notes=[DEPRECATION_NOTE])
        with warnings.catch_warnings():
            # The deprecation is recorded once, in the metadata notes.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, example_input(meta, 2))
            frozen = torch.jit.freeze(traced)
            extra = {TORCHSCRIPT_EXTRA: with_io(meta, exported).embedded_json()}
            torch.jit.save(frozen, str(path), _extra_files=extra)
        return [exported]

    def read_embedded(self, path: Path) -> dict[str, Any] | None:
        """Read `<archive>/extra/kdpipe.json` from the zip directly (no TorchScript load)."""
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/extra/" + TORCHSCRIPT_EXTRA):
                    return json.loads(archive.read(name))
        return None
