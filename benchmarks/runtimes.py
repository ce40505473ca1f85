"""ResNet20 and a MobileNetV2 student in FP32, FP16 and INT8 across runtimes, side by side.

    python benchmarks/runtimes.py                   # export the checkpoints first
    python benchmarks/runtimes.py --artifacts DIR   # bench what an earlier run exported

Each checkpoint (by default the shared pretrained ResNet20, and the MobileNetV2 x0.5 KD student of
`kdpipe sweep sweep-mobilenet` when it exists) is exported with `kdpipe.export` to every target
and quantization of TARGETS x QUANTIZE that is supported and installed (skipped pairs are listed);
the checkpoint itself runs in PyTorch eager. Then:

1. a scoring pass: every artifact in every runtime that opens it, over the whole test set, gives
   top-1 and top-1 agreement with PyTorch eager (the same images, the same chunking); peak RSS of
   a fresh process comes from `kdpipe bench`;
2. the same timing-only `kdpipe bench` (batch 1 and 32, the same thread count for every runtime,
   --min-time-s of timed calls per row) twice back to back (--out/run1, --out/run2).

Printed, with the targets of issues #5 and #17:

- ONNX Runtime batch-1 p50 vs PyTorch eager          (>= 3x faster)
- INT8 ONNX vs FP32 ONNX throughput at batch 32      (>= 1.3x)
- LiteRT INT8 batch-1 p50 vs ONNX Runtime INT8       (within 1.5x)
- every FP32 artifact's agreement with PyTorch       (>= 99.9%)
- every INT8 artifact's agreement, and its top-1 vs PyTorch FP32 (>= 97%, within 0.5 point)
- how far the two runs' p50s are apart, row by row   (within 10%)

The comparison goes to --out/summary.md and --out/summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdpipe import atomic  # noqa: E402
from kdpipe.bench.bench import BenchConfig, load_test_images, run_bench  # noqa: E402
from kdpipe.bench.devices import LabelledImages  # noqa: E402
from kdpipe.errors import KdpipeError  # noqa: E402
from kdpipe.report.schema import BenchReport, BenchRow  # noqa: E402
from kdpipe.report.table import markdown_table  # noqa: E402
from kdpipe.runtime import runtime  # noqa: E402
from kdpipe.runtime.artifact import Artifact, open_artifact  # noqa: E402
from kdpipe.runtime.chunks import eval_batch_size, run_in_chunks, unit_floats  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "weights" / "resnet20-12fca82f.th"
MOBILENET = ROOT / "runs" / "sweep-mobilenet" / "kd-T4-a0.9-s0" / "model.pt"
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz"
TARGETS = ["torchscript", "onnx", "executorch", "litert", "openvino", "ncnn"]
QUANTIZE = ["none", "fp16", "int8"]
RUNTIMES = ["eager", "torchscript", "onnxruntime", "executorch", "litert", "openvino", "ncnn"]
GOALS = {"ort_vs_eager_b1": 3.0, "int8_vs_fp32_onnx_b32": 1.3, "litert_vs_ort_int8_b1": 1.5,
         "run_agreement": 0.10, "fp32_agreement": 99.9, "int8_agreement": 97.0,
         "int8_top1_drop": 0.5}


def export_all(checkpoint: Path, data: Path | None, out: Path, targets: list[str],
               quantize: list[str]) -> list[Path]:
    """Every supported (target, quantization) of targets x quantize with kdpipe.export (each
    artifact parity-checked against PyTorch on 1,000 test images, INT8 calibrated); a failed
    artifact is reported and left out."""
    from kdpipe.export import ExportFailed, export_checkpoint

    try:
        results = export_checkpoint(checkpoint, targets, quantize, out, batch_sizes="1,32",
                                    calibration_data=str(data) if data else None)
    except ExportFailed as failed:
        results = failed.results
        for r in results:
            if r.status == "failed":
                print(f"export failed, left out: {r.target} {r.quantize}: {r.reason}")
    return [r.path for r in results if r.status == "ok" and r.path is not None]


def artifacts_in(folder: Path) -> list[Path]:
    """Every exported file in a folder (the files beside their `.json` sidecars)."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix != ".json" and p.with_name(p.name + ".json").is_file())


def predictions(path: Path, runtime_name: str, images: LabelledImages, threads: int) -> np.ndarray:
    """Predicted classes of every test image, in chunks the artifact accepts."""
    artifact = open_artifact(path)
    run = runtime(runtime_name).load(artifact, threads).run
    size = eval_batch_size(artifact)
    return np.concatenate([
        run_in_chunks(run, unit_floats(images.images[i:i + size]), size).argmax(axis=1)
        for i in range(0, len(images.labels), size)])


def scores(report: BenchReport, artifacts: dict[str, Artifact], images: LabelledImages,
           threads: int) -> dict[tuple[str, str], dict[str, float]]:
    """Top-1 and agreement with PyTorch eager of every (artifact, runtime) the bench ran, keyed
    by (file name, runtime); each artifact is compared with the eager run of its own checkpoint."""
    pairs = sorted({(r.name, r.runtime) for r in report.rows if r.status == "ok"})
    predicted = {pair: predictions(artifacts[pair[0]].path, pair[1], images, threads)
                 for pair in pairs}
    reference = {artifacts[name].model: p for (name, rt), p in predicted.items() if rt == "eager"}
    return {pair: {"top1": 100.0 * float((p == images.labels).mean()),
                   "agreement": 100.0 * float((p == reference[artifacts[pair[0]].model]).mean())}
            for pair, p in predicted.items()}


def with_scores(timed: BenchReport, memory: BenchReport,
                scored: dict[tuple[str, str], dict[str, float]]) -> BenchReport:
    """The timing run's rows with top-1 from the scoring pass and peak memory from the bench."""
    rss = {key(r): r.peak_rss_mb for r in memory.rows}
    rows = [dataclasses.replace(r, top1=scored.get((r.name, r.runtime), {}).get("top1"),
                                peak_rss_mb=rss.get(key(r))) for r in timed.rows]
    return dataclasses.replace(timed, rows=rows, data=memory.data)


def key(row: BenchRow) -> tuple[str, str, int]:
    return row.name, row.runtime, row.batch_size


def find(report: BenchReport, artifacts: dict[str, Artifact], model: str, runtime_name: str,
         fmt: str, quantization: str, batch: int) -> BenchRow | None:
    for row in report.rows:
        if (artifacts[row.name].model, row.runtime, row.format, row.quantization,
                row.batch_size, row.status) == (model, runtime_name, fmt, quantization, batch,
                                                "ok"):
            return row
    return None


def ratio(slow: BenchRow | None, fast: BenchRow | None, field: str = "p50_ms") -> float | None:
    if slow is None or fast is None:
        return None
    return getattr(slow, field) / getattr(fast, field)


def figures(first: BenchReport, second: BenchReport, artifacts: dict[str, Artifact],
            scored: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """The headline figures per model (speed-ups from the first run, agreement from both)."""
    out: dict[str, dict[str, float | None]] = {}
    for model in sorted({a.model for a in artifacts.values()}):
        def row(rt: str, fmt: str, q: str, b: int) -> BenchRow | None:
            return find(first, artifacts, model, rt, fmt, q, b)  # noqa: B023 (this iteration's)

        mine = {pair: v for pair, v in scored.items() if artifacts[pair[0]].model == model}
        quant = {pair: artifacts[pair[0]].quantization for pair in mine}
        fp32 = [v for pair, v in mine.items() if quant[pair] == "fp32" and pair[1] != "eager"]
        int8 = [v for pair, v in mine.items() if quant[pair] == "int8"]
        eager_top1 = next(v["top1"] for pair, v in mine.items() if pair[1] == "eager")
        out[model] = {
            "ort_vs_eager_b1": ratio(row("eager", "checkpoint", "fp32", 1),
                                     row("onnxruntime", "onnx", "fp32", 1)),
            "int8_vs_fp32_onnx_b32": ratio(row("onnxruntime", "onnx", "fp32", 32),
                                           row("onnxruntime", "onnx", "int8", 32)),
            "litert_vs_ort_int8_b1": ratio(row("litert", "litert", "int8", 1),
                                           row("onnxruntime", "onnx", "int8", 1)),
            "fp32_agreement": min((v["agreement"] for v in fp32), default=None),
            "int8_agreement": min((v["agreement"] for v in int8), default=None),
            "int8_top1_drop": max((eager_top1 - v["top1"] for v in int8), default=None),
        }
    gaps = spread(first, second)
    for model in out:
        out[model]["run_agreement"] = max(
            (g for k, g in gaps.items() if artifacts[k[0]].model == model), default=None)
    return out


def spread(first: BenchReport, second: BenchReport) -> dict[tuple[str, str, int], float]:
    """|p50 run 2 - p50 run 1| / p50 run 1 of every row measured in both runs."""
    again = {key(r): r for r in second.rows if r.status == "ok"}
    return {key(r): abs(again[key(r)].p50_ms - r.p50_ms) / r.p50_ms  # type: ignore[operator]
            for r in first.rows if r.status == "ok" and key(r) in again}


def side_by_side(first: BenchReport, second: BenchReport,
                 scored: dict[tuple[str, str], dict[str, float]]) -> str:
    """One Markdown table: both runs' p50 and throughput per row, with top-1, agreement, memory."""
    again = {key(r): r for r in second.rows}
    gaps = spread(first, second)
    records = []
    for row in first.rows:
        if row.status != "ok" or key(row) not in again:
            continue
        other = again[key(row)]
        score = scored.get((row.name, row.runtime), {})
        records.append({
            "artifact": row.name, "runtime": row.runtime, "quant": row.quantization,
            "batch": row.batch_size, "top1": _fmt(score.get("top1"), "{:.2f}"),
            "agree": _fmt(score.get("agreement"), "{:.2f}"),
            "p50_1": _fmt(row.p50_ms, "{:.3f}"), "p50_2": _fmt(other.p50_ms, "{:.3f}"),
            "gap": f"{100 * gaps[key(row)]:.1f}%", "ips": _fmt(row.throughput_ips, "{:,.0f}"),
            "rss": _fmt(row.peak_rss_mb, "{:.0f}"), "size": f"{row.size_bytes / 2**20:.2f}",
        })
    columns = [("artifact", "artifact"), ("runtime", "runtime"), ("quant", "quant"),
               ("batch", "batch"), ("top1", "top-1 %"), ("agree", "agrees with eager %"),
               ("p50_1", "p50 ms run 1"), ("p50_2", "p50 ms run 2"), ("gap", "run gap"),
               ("ips", "img/s run 1"), ("rss", "peak RSS MiB"), ("size", "size MiB")]
    return markdown_table(records, columns)


def verdicts(model: str, values: dict[str, float | None]) -> list[str]:
    """One line per figure: its value, the goal, met or not (or not measured)."""
    lines = {
        "ort_vs_eager_b1": ("ONNX Runtime batch-1 p50 vs PyTorch eager", "{:.2f}x faster",
                            ">= {}x", lambda v, g: v >= g),
        "int8_vs_fp32_onnx_b32": ("INT8 vs FP32 ONNX throughput at batch 32", "{:.2f}x",
                                  ">= {}x", lambda v, g: v >= g),
        "litert_vs_ort_int8_b1": ("LiteRT INT8 batch-1 p50 / ONNX Runtime INT8", "{:.2f}x",
                                  "<= {}x", lambda v, g: v <= g),
        "fp32_agreement": ("lowest FP32 agreement with PyTorch", "{:.2f}%", ">= {}%",
                           lambda v, g: v >= g),
        "int8_agreement": ("lowest INT8 agreement with PyTorch", "{:.2f}%", ">= {}%",
                           lambda v, g: v >= g),
        "int8_top1_drop": ("largest INT8 top-1 drop vs PyTorch FP32", "{:.2f} points",
                           "<= {} point", lambda v, g: v <= g),
        "run_agreement": ("two back-to-back runs: p50s at most", "{:.1%} apart", "<= {:.0%}",
                          lambda v, g: v <= g),
    }
    out = []
    for name, (label, fmt, goal_fmt, ok) in lines.items():
        value, goal = values.get(name), GOALS[name]
        if value is None:
            out.append(f"- {model}: {label}: not measured (a runtime or row is missing)")
            continue
        verdict = "met" if ok(value, goal) else "NOT met"
        out.append(f"- {model}: {label}: {fmt.format(value)} (goal {goal_fmt.format(goal)}): "
                   f"{verdict}")
    return out


def _fmt(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append",
                        help="a checkpoint to compare (repeatable; default: the shared ResNet20 "
                             "and the MobileNetV2 student of sweep-mobilenet when it exists)")
    parser.add_argument("--artifacts", type=Path,
                        help="bench the files an earlier run exported into DIR/<checkpoint stem>")
    parser.add_argument("--targets", default=",".join(TARGETS), help="export targets to compare")
    parser.add_argument("--quantize", default=",".join(QUANTIZE), help="quantizations to compare")
    parser.add_argument("--data", type=Path, default=DATA if DATA.exists() else None)
    parser.add_argument("--limit-test", type=int, default=None, help="score on N test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--min-time-s", type=float, default=1.0,
                        help="timed seconds per row at least (kdpipe bench's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-runtimes")
    args = parser.parse_args()
    checkpoints = args.checkpoint or [c for c in (CHECKPOINT, MOBILENET) if c.exists()]
    missing = [c for c in checkpoints if not c.exists()]
    if missing or not checkpoints:
        raise SystemExit(f"checkpoint absent: {missing or CHECKPOINT} (the shared weights live "
                         "in ../shared; the MobileNetV2 student comes from "
                         "`kdpipe sweep sweep-mobilenet`)")
    if args.data is None:
        raise SystemExit("the scoring pass needs the JPEG test set: pass --data")

    paths: list[Path] = []
    for checkpoint in checkpoints:
        folder = (args.artifacts or args.out / "artifacts") / checkpoint.parent.name
        files = (artifacts_in(folder) if args.artifacts
                 else export_all(checkpoint, args.data, folder, args.targets.split(","),
                                 args.quantize.split(",")))
        paths += [checkpoint, *files]
    common = dict(batch_sizes=[1, 32], threads=args.threads, warmup=args.warmup,
                  iters=args.iters, min_time_s=args.min_time_s, runtimes=RUNTIMES,
                  data=str(args.data))
    # Peak memory in a pass of its own, then the same timing-only bench twice back to back, so
    # that the two runs compared differ by nothing but the moment; scores come last (no timing).
    memory, _ = run_bench(paths, BenchConfig(**{**common, "iters": 1, "min_time_s": 0},
                                             accuracy=False, out=str(args.out / "memory")))
    timing = {**common, "accuracy": False, "memory": False}
    first, _ = run_bench(paths, BenchConfig(**timing, out=str(args.out / "run1")))
    second, _ = run_bench(paths, BenchConfig(**timing, out=str(args.out / "run2")))
    artifacts = {a.label: a for a in map(open_artifact, paths)}
    try:
        images = load_test_images(BenchConfig(data=str(args.data), limit_test=args.limit_test),
                                  list(artifacts.values()))
    except KdpipeError as error:
        raise SystemExit(str(error)) from None
    scored = scores(first, artifacts, images, args.threads)
    first = with_scores(first, memory, scored)
    values = figures(first, second, artifacts, scored)
    text = "\n".join([
        "# Students across runtimes", "",
        f"{first.machine.get('cpu')}, {args.threads} threads; top-1 and agreement on "
        f"{len(images.labels):,} test images; "
        f"{', '.join(f'{k} {v}' for k, v in first.runtimes.items())}", "",
        side_by_side(first, second, scored), "",
        *[line for model, v in values.items() for line in verdicts(model, v)], ""])
    atomic.write_text(args.out / "summary.md", text)
    atomic.write_json(args.out / "summary.json", {
        "figures": values, "goals": GOALS,
        "scores": {f"{n} {rt}": v for (n, rt), v in scored.items()},
        "run1": first.to_json(), "run2": second.to_json()})
    print(text)


if __name__ == "__main__":
    main()
