"""INT8 ONNX schemes side by side on this CPU: accuracy, agreement, kernel check and speed.

    python benchmarks/int8_schemes.py                       # ResNet20 (zoo), full 10k test set
    python benchmarks/int8_schemes.py --emulate-cpu Haswell # + the kernel check on an AVX2 CPU
    python benchmarks/int8_schemes.py --executorch --skip-onnx  # ExecuTorch rows only

The pretrained ResNet20 is exported to FP32 ONNX with `kdpipe.export`, then quantized with ONNX
Runtime's `quantize_static` (QDQ, per-channel weights, 512 stratified training images) in each
scheme of SCHEMES: the one kdpipe used before (uint8 activations, full 8-bit weights, min/max
ranges), the one it uses now (7-bit weights, percentile ranges: `kdpipe.export.onnx.INT8_SCHEME`),
and int8 activations (S8S8). For each file, on the full JPEG test set:

- top-1, and top-1 agreement with the FP32 ONNX model;
- the kernel check: agreement of the optimized session (ONNX Runtime's integer kernels) with the
  same file run with graph optimizations off (QDQ computed in float): the saturation detector;
- batch-1 p50 and batch-32 throughput (kdpipe's latency protocol, 2 threads, >= 1 s per row),
  FP32 and every scheme in `--rounds` interleaved rounds: medians, and the ratio to the old
  scheme measured side by side in each round (the median of those ratios).

`--executorch` adds ExecuTorch rows, accuracy only (no latency): the FP32 and INT8 .pte files that
`kdpipe.export` writes with its current scheme (INT8: PT2E + XNNPACK quantizer, symmetric
per-channel weights, 512 calibration images), each with its top-1 and its top-1 agreement with
PyTorch FP32 (the checkpoint in eager mode) on the same test images. `--skip-onnx` leaves the ONNX
scheme rows (and their latency runs) out.

`--emulate-cpu MODEL` reruns the kernel check (on --emulated-images test images) under
`qemu-x86_64-static -cpu MODEL` (Debian's qemu-user-static): Haswell is an AVX2 CPU without
AVX-512 or VNNI, the class of CPU where ONNX Runtime's U8S8 kernels saturate. Emulated numbers are
functional (which predictions change), never timings. Results: --out/summary.md and .json.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdpipe import atomic  # noqa: E402
from kdpipe.report.table import markdown_table  # noqa: E402
from kdpipe.runinfo import cpu_facts  # noqa: E402
from kdpipe.runtime.latency import measure  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "weights" / "resnet20-12fca82f.th"
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz"
SCHEMES: dict[str, dict[str, Any]] = {
    "U8S8 8-bit, min/max (kdpipe before)": {"reduce_range": False, "activation": "QUInt8",
                                            "calibration": "MinMax"},
    "U8S8 7-bit, percentile (kdpipe now)": {"reduce_range": True, "activation": "QUInt8",
                                            "calibration": "Percentile"},
    "S8S8 8-bit, min/max": {"reduce_range": False, "activation": "QInt8",
                            "calibration": "MinMax"},
}
ET_COLUMNS = [("artifact", "Artifact"), ("size_kib", "Size KiB"), ("top1", "Top-1 %"),
              ("agreement_pytorch", "Agree w/ PyTorch FP32 %"),
              ("agreement_fp32_pte", "Agree w/ FP32 .pte %")]
COLUMNS = [("scheme", "Scheme"), ("size_kib", "Size KiB"), ("top1", "Top-1 %"),
           ("agreement", "Agree w/ FP32 %"), ("kernel_agreement", "Kernels vs sim. %"),
           ("kernel_max_diff", "Kernels vs sim. max |d|"), ("p50_b1_ms", "b1 p50 ms"),
           ("ips_b32", "b32 img/s"), ("b1_vs_before", "b1 p50 / before"),
           ("b32_vs_before", "b32 img/s / before")]
BEFORE = "U8S8 8-bit, min/max (kdpipe before)"


def quantize(fp32: Path, out: Path, calibration: np.ndarray, scheme: dict[str, Any]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + 64] for i in range(0, len(calibration), 64))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    percentile = scheme["calibration"] == "Percentile"
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=scheme["reduce_range"],
                    activation_type=getattr(QuantType, scheme["activation"]),
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, scheme["calibration"]),
                    extra_options={"CalibPercentile": 99.999} if percentile else {})


def session(path: Path, optimized: bool, threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def logits(s: Any, images: np.ndarray, chunk: int = 500) -> np.ndarray:
    return np.concatenate([s.run(None, {"input": images[i:i + chunk]})[0]
                           for i in range(0, len(images), chunk)])


def kernel_check(path: Path, images: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement %, max |diff|) of the optimized session with the float simulation."""
    fast, simulated = logits(session(path, True), images), logits(session(path, False), images)
    return (float(100 * (fast.argmax(1) == simulated.argmax(1)).mean()),
            float(np.abs(fast - simulated).max()))


def emulated_kernel_checks(files: dict[str, Path], images: np.ndarray, cpu: str,
                           work: Path) -> dict[str, tuple[float, float]]:
    """`kernel_check` of each file in a subprocess under qemu-x86_64-static -cpu `cpu`."""
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate-cpu needs qemu-user-static: apt-get install qemu-user-static")
    np.save(work / "images.npy", images)
    code = ("import json, sys\nimport numpy as np\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from benchmarks.int8_schemes import kernel_check\n"
            f"images = np.load({str(work / 'images.npy')!r})\n"
            "print(json.dumps({k: kernel_check(p, images) for k, p in "
            "json.loads(sys.argv[1]).items()}))\n")
    paths = json.dumps({name: str(path) for name, path in files.items()})
    done = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", code, paths],
                          capture_output=True, text=True, check=True)
    return {k: tuple(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def predictions(run: Any, artifact: Any, images_uint8: np.ndarray) -> np.ndarray:
    """Top-1 class of `run` (a kdpipe session's `run`) for each uint8 image, in the batch sizes
    `artifact` accepts; converted chunk by chunk so 10k images stay uint8."""
    from kdpipe.runtime.chunks import eval_batch_size, run_in_chunks, unit_floats

    size = eval_batch_size(artifact)
    return np.concatenate([run_in_chunks(run, unit_floats(images_uint8[i:i + size]), size)
                           .argmax(1) for i in range(0, len(images_uint8), size)])


def executorch_rows(checkpoint: Path, dataset: Any, images_uint8: np.ndarray, labels: np.ndarray,
                    out: Path, threads: int = 2) -> tuple[float, list[dict[str, Any]]]:
    """(PyTorch FP32 top-1, one row per .pte): kdpipe's FP32 and INT8 ExecuTorch exports scored
    on `images_uint8`, agreement with PyTorch eager and with the FP32 .pte. Accuracy only."""
    from kdpipe.export import export_checkpoint
    from kdpipe.runtime import runtime
    from kdpipe.runtime.artifact import from_checkpoint, open_artifact

    reference = from_checkpoint(checkpoint)
    pytorch = predictions(runtime("eager").load(reference, threads).run, reference, images_uint8)
    results = export_checkpoint(checkpoint, "executorch", "none,int8", out / "executorch",
                                dataset=dataset, parity_size=1000)
    rows, fp32_pte = [], None
    for result in results:  # in the requested order: fp32 first
        assert result.path is not None
        artifact = open_artifact(result.path)
        predicted = predictions(runtime("executorch").load(artifact, threads).run, artifact,
                                images_uint8)
        fp32_pte = predicted if fp32_pte is None else fp32_pte
        rows.append({"artifact": f"{result.path.name} ({artifact.quantization})",
                     "size_kib": round(artifact.size_bytes / 1024, 1),
                     "top1": round(float(100 * (predicted == labels).mean()), 2),
                     "agreement_pytorch": round(float(100 * (predicted == pytorch).mean()), 2),
                     "agreement_fp32_pte": round(float(100 * (predicted == fp32_pte).mean()), 2),
                     "scheme": result.metadata.quantization_detail if result.metadata else ""})
        print(rows[-1], flush=True)
    return round(float(100 * (pytorch == labels).mean()), 2), rows


def onnx_rows(checkpoint: Path, dataset: Any, part: Any, images: np.ndarray, labels: np.ndarray,
              out: Path, rounds: int) -> tuple[float, dict[str, Path], list[dict[str, Any]]]:
    """(FP32 ONNX top-1, the INT8 files, one row per scheme of SCHEMES), latency included."""
    from kdpipe.export import export_checkpoint

    calibration = (part.train_images.float() / 255).numpy()
    (fp32_result,) = export_checkpoint(checkpoint, "onnx", "none", out / "fp32",
                                       dataset=dataset, parity_size=1000)
    reference = logits(session(fp32_result.path, True), images).argmax(1)
    files = {}
    for i, (name, scheme) in enumerate(SCHEMES.items()):
        files[name] = out / f"scheme{i}.int8.onnx"
        quantize(fp32_result.path, files[name], calibration, scheme)
    rows, sessions = [], {"FP32": session(fp32_result.path, True)}
    for name, path in files.items():
        fast = sessions[name] = session(path, True)
        predicted = logits(fast, images).argmax(1)
        agree_kernels, max_diff = kernel_check(path, images)
        rows.append({"scheme": name, "size_kib": round(path.stat().st_size / 1024, 1),
                     "top1": round(float(100 * (predicted == labels).mean()), 2),
                     "agreement": round(float(100 * (predicted == reference).mean()), 2),
                     "kernel_agreement": round(agree_kernels, 2),
                     "kernel_max_diff": round(max_diff, 3)})
        print(rows[-1], flush=True)
    timing = latency_rounds(sessions, images.shape[1:], rounds)
    fp32_size = round(fp32_result.path.stat().st_size / 1024, 1)
    rows.append({"scheme": "FP32 (reference)", "size_kib": fp32_size,
                 "top1": round(float(100 * (reference == labels).mean()), 2),
                 "agreement": 100.0})
    for row in rows:
        row.update(timing[row["scheme"] if row["scheme"] in timing else "FP32"])
    return round(float(100 * (reference == labels).mean()), 2), files, rows


def run_once(s: Any, x: np.ndarray) -> Any:
    return s.run(None, {"input": x})


def latency_rounds(sessions: dict[str, Any], shape: tuple[int, ...],
                   rounds: int) -> dict[str, dict[str, Any]]:
    """Batch-1 p50 and batch-32 throughput of every session, in `rounds` interleaved rounds (all
    sessions once per round), so a busy spell of the machine hits every scheme alike. Each row's
    numbers are medians over rounds; its ratios to the old scheme are medians of the per-round
    ratios, measured side by side."""
    runs = {name: functools.partial(run_once, s) for name, s in sessions.items()}
    b1: dict[str, list[float]] = {name: [] for name in runs}
    b32: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            b1[name].append(measure(run, shape, 1, warmup=20, iters=100, min_time_s=1.0).p50_ms)
            b32[name].append(measure(run, shape, 32, warmup=5, iters=50,
                                     min_time_s=1.0).throughput_ips)
        print(f"latency round {r + 1}/{rounds}: "
              + ", ".join(f"{n[:12]} {b1[n][-1]:.3f} ms" for n in runs), flush=True)
    out = {}
    for name in runs:
        out[name] = {"p50_b1_ms": round(float(np.median(b1[name])), 3),
                     "ips_b32": round(float(np.median(b32[name]))),
                     "p50_b1_rounds": [round(v, 3) for v in b1[name]],
                     "ips_b32_rounds": [round(v) for v in b32[name]]}
        if BEFORE in runs:
            out[name]["b1_vs_before"] = round(float(np.median(
                np.array(b1[name]) / np.array(b1[BEFORE]))), 2)
            out[name]["b32_vs_before"] = round(float(np.median(
                np.array(b32[name]) / np.array(b32[BEFORE]))), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "int8-schemes")
    parser.add_argument("--limit-test", type=int, default=None, help="default: the full test set")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved latency rounds (medians reported) [default: 3]")
    parser.add_argument("--emulate-cpu", default=None, help="e.g. Haswell (AVX2, no VNNI)")
    parser.add_argument("--emulated-images", type=int, default=200)
    parser.add_argument("--executorch", action="store_true",
                        help="also FP32 and INT8 ExecuTorch rows (accuracy only, no latency)")
    parser.add_argument("--skip-onnx", action="store_true",
                        help="leave out the ONNX scheme rows and their latency runs")
    args = parser.parse_args()
    if args.skip_onnx and (args.emulate_cpu or not args.executorch):
        parser.error("--skip-onnx needs --executorch and excludes --emulate-cpu")

    from kdpipe.data import load_dataset, subset

    dataset = load_dataset(str(args.data))
    part = subset(dataset, limit_train=512, limit_test=args.limit_test, seed=0)
    labels = part.test_labels.numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# INT8 schemes, ResNet20 (zoo), {len(labels)} test images", "",
             f"CPU: {cpu_facts()}"]
    summary: dict[str, Any] = {"machine": cpu_facts(), "n_test": len(labels)}
    if not args.skip_onnx:
        images = np.ascontiguousarray((part.test_images.float() / 255).numpy())
        fp32_top1, files, rows = onnx_rows(args.checkpoint, dataset, part, images, labels,
                                           args.out, args.rounds)
        lines += ["", f"ONNX: FP32 ONNX top-1 {fp32_top1}%.", "", markdown_table(rows, COLUMNS)]
        summary.update({"fp32_top1": fp32_top1, "rows": rows})
    if args.executorch:
        pytorch_top1, et_rows = executorch_rows(args.checkpoint, dataset,
                                                part.test_images.numpy(), labels, args.out)
        lines += ["", f"ExecuTorch (accuracy only): PyTorch FP32 top-1 {pytorch_top1}%.", "",
                  markdown_table(et_rows, ET_COLUMNS)]
        summary["executorch"] = {"pytorch_top1": pytorch_top1, "rows": et_rows}
    if args.emulate_cpu:
        with tempfile.TemporaryDirectory() as tmp:
            emulated = emulated_kernel_checks(files, images[:args.emulated_images],
                                              args.emulate_cpu, Path(tmp))
        summary["emulated"] = {"cpu": args.emulate_cpu, "images": args.emulated_images,
                               "kernel_checks": emulated}
        lines += ["", f"Kernel check under qemu-x86_64 -cpu {args.emulate_cpu} (first "
                      f"{args.emulated_images} images; functional, not timed):", ""]
        lines += [f"- {name}: kernels vs simulation {a:.2f}%, max |diff| {d:.3f}"
                  for name, (a, d) in emulated.items()]
        print(emulated, flush=True)
    atomic.write_text(args.out / "summary.md", "\n".join(lines) + "\n")
    atomic.write_json(args.out / "summary.json", summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
