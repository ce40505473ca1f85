"""Where LiteRT INT8 loses agreement: the PT2E graph, its .tflite lowering, and the alternative.

    python benchmarks/litert_int8.py --checkpoint runs/mobilenet-5ep/kd-T4-a0.9-s0/model.pt

kdpipe's LiteRT INT8 export first quantized in PyTorch (PT2E with litert-torch's quantizer:
int8 per-channel weights, int8 activations from histogram observers, 512 calibration images) and
lowered that graph with `litert_torch.convert`. On the MobileNetV2 x0.5 student its parity check
failed (92.9% top-1 agreement with PyTorch, gate 97%), on ResNet20 it passed (98.3%); the export
now uses (3) below (`kdpipe/export/litert.py`, which calibrates in calls of 64 images). This
script measures, on the same stratified test images, the top-1 agreement with the FP32 model of:

1. the PT2E graph itself, run in PyTorch (quantization simulated in float);
2. its `.tflite` lowering, in LiteRT's Interpreter with XNNPACK and with the built-in kernels;
3. ai-edge-quantizer's static int8 recipe (`static_wi8_ai8`, min/max) applied to the FP32
   `.tflite` instead, calibrated on the same images (its input and output are int8 tensors: the
   script quantizes the input with the file's scale and zero point).

If (1) agrees and (2) does not, the loss is in the lowering, not in the quantization scheme.
Batch size 1 throughout (static shapes, as kdpipe's LiteRT files are). Accuracy only, no timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdpipe import atomic  # noqa: E402
from kdpipe.runinfo import cpu_facts  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz"


def folded_model(checkpoint: Path) -> torch.nn.Module:
    from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD
    from kdpipe.export.base import Normalized
    from kdpipe.models.checkpoint import load_checkpoint

    return Normalized(load_checkpoint(checkpoint), CIFAR10_MEAN, CIFAR10_STD).eval()


def pt2e_graph(model: torch.nn.Module, calibration: torch.Tensor) -> tuple[Any, Any]:
    """Session 7's export INT8 path up to the lowering (litert-torch's PT2E quantizer)."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(model, (calibration[:2],),
                                dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), 64):
            prepared(calibration[i:i + 64])
    return convert_pt2e(prepared, fold_quantize=False), quantizer


def tflite_logits(path: Path, images: np.ndarray, delegate: bool = True) -> np.ndarray:
    """Float logits of a batch-1 `.tflite`, quantizing an int8 input and dequantizing an int8
    output with the file's own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    options = {} if delegate else {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = Interpreter(model_path=str(path), num_threads=2, **options)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    logits = []
    for k in range(len(images)):
        x = images[k:k + 1]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        logits.append((y - zero) * scale if scale else y)
    return np.concatenate(logits)


def static_int8(fp32: Path, calibration: np.ndarray, dest: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer import recipe

    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    quantizer = aeq.Quantizer(str(fp32))
    quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
    result = quantizer.calibrate({key: [{name: calibration[k:k + 1]}
                                        for k in range(len(calibration))]})
    quantizer.quantize(result, enable_progress_report=False).export_model(str(dest),
                                                                          overwrite=True)


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {"agreement": round(float(100 * (logits.argmax(1) == reference.argmax(1)).mean()), 2),
            "max_abs_diff": round(float(np.abs(logits - reference).max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit-test", type=int, default=1000)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "litert-int8")
    args = parser.parse_args()

    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from kdpipe.data import load_dataset, subset

    part = subset(load_dataset(str(args.data)), limit_train=args.calibration,
                  limit_test=args.limit_test, seed=0)
    calibration = part.train_images.float() / 255
    test = part.test_images.float() / 255
    model = folded_model(args.checkpoint)
    with torch.no_grad():
        reference = model(test).numpy()
    graph, quantizer = pt2e_graph(model, calibration)
    with torch.no_grad():
        rows = {"PT2E graph in PyTorch (simulated)": agreement(graph(test).numpy(), reference)}
    with tempfile.TemporaryDirectory() as tmp:
        lowered, fp32, static = (Path(tmp) / n for n in ("pt2e.tflite", "fp32.tflite",
                                                         "static.tflite"))
        litert_torch.convert(graph, (test[:1],), quant_config=QuantConfig(
            pt2e_quantizer=quantizer)).export(str(lowered))
        litert_torch.convert(model, (test[:1],)).export(str(fp32))
        images = np.ascontiguousarray(test.numpy())
        rows["PT2E lowered .tflite, XNNPACK"] = agreement(tflite_logits(lowered, images), reference)
        rows["PT2E lowered .tflite, built-in kernels"] = agreement(
            tflite_logits(lowered, images, delegate=False), reference)
        static_int8(fp32, np.ascontiguousarray(calibration.numpy()), static)
        rows["ai-edge-quantizer static_wi8_ai8 .tflite, XNNPACK"] = {
            **agreement(tflite_logits(static, images), reference),
            "size_kib": round(static.stat().st_size / 1024, 1)}
        rows["PT2E lowered .tflite, XNNPACK"]["size_kib"] = round(lowered.stat().st_size / 1024, 1)
    summary = {"checkpoint": str(args.checkpoint), "n_test": len(test),
               "n_calibration": len(calibration), "machine": cpu_facts(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "summary.json", summary)
    for name, row in rows.items():
        print(f"{name}: {row}")


if __name__ == "__main__":
    main()
