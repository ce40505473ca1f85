"""ResNet20 in FP32 and INT8 across runtimes on this CPU, side by side, in one run.

    python benchmarks/runtimes.py                   # export ../shared/weights/resnet20 first
    python benchmarks/runtimes.py --artifacts DIR   # bench files `kdpipe export` wrote before

The pretrained ResNet20 (pytorch_resnet_cifar10 zoo) is exported with `kdpipe.export` to
TorchScript, ONNX FP32 and INT8, and ExecuTorch (XNNPACK) FP32 and INT8; the checkpoint itself
runs in PyTorch eager. `kdpipe bench` times all of them at batch 1 and 32 with the same thread
count (2), twice back to back. Printed:

- ONNX Runtime batch-1 p50 vs PyTorch eager          (issue #5 target: >= 3x faster)
- INT8 ONNX vs FP32 ONNX throughput at batch 32      (target: >= 1.3x)
- how far the two runs' p50s are apart, row by row   (target: within 10%)

Top-1 (full test set) and peak memory come from a scoring pass (--out/scores); then the same
timing-only bench (--min-time-s of timed calls per row, 1 s by default) runs twice back to back
(--out/run1, --out/run2). The comparison goes to --out/summary.md and --out/summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdpipe import atomic  # noqa: E402
from kdpipe.bench.bench import BenchConfig, run_bench  # noqa: E402
from kdpipe.report.schema import BenchReport, BenchRow  # noqa: E402
from kdpipe.report.table import markdown_table  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "weights" / "resnet20-12fca82f.th"
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz"
# (export target, quantization) of every artifact compared here.
EXPORTS = [("torchscript", "fp32"), ("onnx", "fp32"), ("onnx", "int8"),
           ("executorch", "fp32"), ("executorch", "int8")]
RUNTIMES = ["eager", "torchscript", "onnxruntime", "executorch"]
PRECISION = {"none": "fp32", "int8": "int8"}  # export's --quantize -> the artifact's precision
TARGETS = {"ort_vs_eager_b1": 3.0, "int8_vs_fp32_onnx_b32": 1.3, "run_agreement": 0.10}


def export_all(checkpoint: Path, data: Path | None, out: Path) -> list[Path]:
    """Export the checkpoint to every (target, quantization) of EXPORTS with kdpipe.export
    (each artifact parity-checked against PyTorch on 1,000 test images, INT8 calibrated)."""
    from kdpipe.export import export_checkpoint

    paths: list[Path] = []
    for quantize in ("none", "int8"):
        targets = ",".join(t for t, q in EXPORTS if q == PRECISION[quantize])
        results = export_checkpoint(checkpoint, targets, quantize, out, batch_sizes="1,32",
                                    calibration_data=str(data) if data else None)
        paths += [r.path for r in results if r.status == "ok" and r.path is not None]
    return paths


def artifacts_in(folder: Path) -> list[Path]:
    """Every exported file in a folder (the files beside their `.json` sidecars)."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix != ".json" and p.with_name(p.name + ".json").is_file())


def with_scores(timed: BenchReport, scored: BenchReport) -> BenchReport:
    """The timing run's rows with top-1 and peak memory from the scoring pass."""
    scores = {key(r): r for r in scored.rows}
    rows = [dataclasses.replace(r, top1=scores[key(r)].top1,
                                peak_rss_mb=scores[key(r)].peak_rss_mb)
            if key(r) in scores else r for r in timed.rows]
    return dataclasses.replace(timed, rows=rows, data=scored.data)


def key(row: BenchRow) -> tuple[str, str, int]:
    return row.name, row.runtime, row.batch_size


def find(report: BenchReport, runtime: str, fmt: str, quantization: str, batch: int) -> BenchRow:
    for row in report.rows:
        if (row.runtime, row.format, row.quantization, row.batch_size, row.status) == (
                runtime, fmt, quantization, batch, "ok"):
            return row
    raise SystemExit(f"no ok row for {runtime} {fmt} {quantization} batch {batch}; see the report")


def ratios(first: BenchReport, second: BenchReport) -> dict[str, float]:
    """The three headline figures (speed-ups from the first run; agreement from both)."""
    eager = find(first, "eager", "checkpoint", "fp32", 1)
    ort = find(first, "onnxruntime", "onnx", "fp32", 1)
    fp32 = find(first, "onnxruntime", "onnx", "fp32", 32)
    int8 = find(first, "onnxruntime", "onnx", "int8", 32)
    return {
        "ort_vs_eager_b1": eager.p50_ms / ort.p50_ms,  # type: ignore[operator]
        "int8_vs_fp32_onnx_b32": int8.throughput_ips / fp32.throughput_ips,  # type: ignore[operator]
        "run_agreement": max(spread(first, second).values()),
    }


def spread(first: BenchReport, second: BenchReport) -> dict[tuple[str, str, int], float]:
    """|p50 run 2 - p50 run 1| / p50 run 1 of every row measured in both runs."""
    again = {key(r): r for r in second.rows if r.status == "ok"}
    return {key(r): abs(again[key(r)].p50_ms - r.p50_ms) / r.p50_ms  # type: ignore[operator]
            for r in first.rows if r.status == "ok" and key(r) in again}


def side_by_side(first: BenchReport, second: BenchReport) -> str:
    """One Markdown table: both runs' p50 and throughput per row, with top-1 and memory."""
    again = {key(r): r for r in second.rows}
    gaps = spread(first, second)
    records = []
    for row in first.rows:
        if row.status != "ok":
            continue
        other = again[key(row)]
        records.append({
            "artifact": row.name, "runtime": row.runtime, "quant": row.quantization,
            "batch": row.batch_size, "top1": _fmt(row.top1, "{:.2f}"),
            "p50_1": _fmt(row.p50_ms, "{:.3f}"), "p50_2": _fmt(other.p50_ms, "{:.3f}"),
            "gap": f"{100 * gaps[key(row)]:.1f}%", "ips": _fmt(row.throughput_ips, "{:,.0f}"),
            "rss": _fmt(row.peak_rss_mb, "{:.0f}"), "size": f"{row.size_bytes / 2**20:.2f}",
        })
    columns = [("artifact", "artifact"), ("runtime", "runtime"), ("quant", "quant"),
               ("batch", "batch"), ("top1", "top-1 %"), ("p50_1", "p50 ms run 1"),
               ("p50_2", "p50 ms run 2"), ("gap", "run gap"), ("ips", "img/s run 1"),
               ("rss", "peak RSS MiB"), ("size", "size MiB")]
    return markdown_table(records, columns)


def verdicts(figures: dict[str, float]) -> list[str]:
    lines = [
        f"ONNX Runtime batch-1 p50 vs PyTorch eager: {figures['ort_vs_eager_b1']:.2f}x faster "
        f"(target >= {TARGETS['ort_vs_eager_b1']}x)",
        f"INT8 vs FP32 ONNX throughput at batch 32: {figures['int8_vs_fp32_onnx_b32']:.2f}x "
        f"(target >= {TARGETS['int8_vs_fp32_onnx_b32']}x)",
        f"two back-to-back runs: p50s at most {100 * figures['run_agreement']:.1f}% apart "
        f"(target <= {100 * TARGETS['run_agreement']:.0f}%)",
    ]
    met = [figures["ort_vs_eager_b1"] >= TARGETS["ort_vs_eager_b1"],
           figures["int8_vs_fp32_onnx_b32"] >= TARGETS["int8_vs_fp32_onnx_b32"],
           figures["run_agreement"] <= TARGETS["run_agreement"]]
    return [f"- {line}: {'met' if ok else 'NOT met'}" for line, ok in zip(lines, met, strict=True)]


def _fmt(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--artifacts", type=Path, help="bench these exported files, skip export")
    parser.add_argument("--data", type=Path, default=DATA if DATA.exists() else None)
    parser.add_argument("--limit-test", type=int, default=None, help="top-1 on N test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--min-time-s", type=float, default=1.0,
                        help="timed seconds per row at least (kdpipe bench's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-runtimes")
    args = parser.parse_args()
    if not args.checkpoint.exists():
        raise SystemExit(f"{args.checkpoint} is absent (the shared weights live in ../shared)")

    files = (artifacts_in(args.artifacts) if args.artifacts
             else export_all(args.checkpoint, args.data, args.out / "artifacts"))
    paths = [args.checkpoint, *files]
    common = dict(batch_sizes=[1, 32], threads=args.threads, warmup=args.warmup,
                  iters=args.iters, min_time_s=args.min_time_s, runtimes=RUNTIMES,
                  data=str(args.data) if args.data else None)
    # Accuracy and memory in a scoring pass of their own; then the same timing-only bench twice
    # back to back, so that the two runs compared differ by nothing but the moment.
    scored, _ = run_bench(paths, BenchConfig(**{**common, "iters": 1, "min_time_s": 0},
                                             limit_test=args.limit_test,
                                             accuracy=args.data is not None,
                                             out=str(args.out / "scores")))
    timing = {**common, "accuracy": False, "memory": False}
    first, _ = run_bench(paths, BenchConfig(**timing, out=str(args.out / "run1")))
    second, _ = run_bench(paths, BenchConfig(**timing, out=str(args.out / "run2")))
    first = with_scores(first, scored)
    figures = ratios(first, second)
    text = "\n".join([
        "# ResNet20 across runtimes", "",
        f"{first.machine.get('cpu')}, {args.threads} threads; "
        f"{', '.join(f'{k} {v}' for k, v in first.runtimes.items())}", "",
        side_by_side(first, second), *verdicts(figures), ""])
    atomic.write_text(args.out / "summary.md", text)
    atomic.write_json(args.out / "summary.json", {"figures": figures, "targets": TARGETS,
                                                  "run1": first.to_json(),
                                                  "run2": second.to_json()})
    print(text)


if __name__ == "__main__":
    main()
