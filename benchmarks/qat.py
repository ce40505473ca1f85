"""INT8 after post-training quantization vs after quantization-aware distillation, per runtime.

    python benchmarks/qat.py --student runs/sweep-resnet/kd-T4-a0.9-s0/model.pt
    python benchmarks/qat.py --student S.pt --epochs 3 --lr 0.0002 --runtimes onnx
    python benchmarks/qat.py --student S.pt --limit-train 200 --limit-test 200   # a smoke run

Given a trained FP32 student checkpoint, the FP32 teacher (default: the shared ResNet110) and the
data (default: the shared JPEG CIFAR-10), on the test set (the full 10k unless --limit-test):

1. `kdpipe export` of the student, FP32 and INT8 (post-training calibration, 512 training
   images), for ONNX (ONNX Runtime) and ExecuTorch (XNNPACK; skipped when not installed);
2. `kdpipe distill --qat` from that student for --epochs (default 2) at --lr (default 0.0005,
   cosine, no warm-up) with --method (default kd) against the teacher, in --out/qat-run (resumed
   if there); --limit-train also limits its images and the calibration images;
3. INT8 export of the QAT checkpoint, which uses its learned activation ranges.

Every artifact's top-1 is computed in its own runtime (the class `kdpipe bench` times) on the
same test images, and a Markdown table (FP32 / INT8 PTQ / INT8 QAT per runtime, with the share of
the PTQ loss that QAT recovers) is printed and written to --out/summary.md (and .json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdpipe import atomic  # noqa: E402
from kdpipe.report.table import markdown_table  # noqa: E402
from kdpipe.runinfo import cpu_facts  # noqa: E402

TEACHER = ROOT.parent / "shared" / "weights" / "resnet110-cifar10jpeg.th"
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz"
RUNTIMES = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch (XNNPACK)"}
COLUMNS = [("runtime", "Runtime"), ("fp32", "FP32 %"), ("int8_ptq", "INT8 PTQ %"),
           ("int8_qat", "INT8 QAT %"), ("recovered", "PTQ loss recovered by QAT %"),
           ("qat_fp32", "FP32 after QAT %")]


def top1(result: Any, images_uint8: np.ndarray, labels: np.ndarray, threads: int) -> float:
    """Top-1 in percent of an exported artifact (an `ExportResult`), run in its own runtime."""
    from kdpipe.export.targets import TARGETS
    from kdpipe.runtime import runtime
    from kdpipe.runtime.artifact import open_artifact
    from kdpipe.runtime.chunks import eval_batch_size, run_in_chunks, unit_floats

    artifact = open_artifact(result.path)
    run = runtime(TARGETS.get(result.target).runtime).load(artifact, threads).run
    size = eval_batch_size(artifact)
    predicted = np.concatenate([run_in_chunks(run, unit_floats(images_uint8[i:i + size]), size)
                                .argmax(1) for i in range(0, len(images_uint8), size)])
    return round(float(100 * (predicted == labels).mean()), 2)


def export(checkpoint: Path, targets: list[str], quantize: str, out: Path, dataset: Any,
           parity_size: int) -> dict[tuple[str, str], Any]:
    """(target, quantize) -> ExportResult; a failed artifact stays in the table as failed."""
    from kdpipe.export import export_checkpoint
    from kdpipe.export.api import ExportFailed

    try:
        results = export_checkpoint(checkpoint, ",".join(targets), quantize, out,
                                    dataset=dataset, parity_size=parity_size, batch_sizes="1,32")
    except ExportFailed as e:
        results = e.results
    return {(r.target, r.quantize): r for r in results}


def distill_qat(args: argparse.Namespace, model: str) -> Path:
    """`kdpipe distill --qat` from the student; returns its model.pt."""
    from kdpipe.train.config import DistillConfig
    from kdpipe.train.distill import distill

    out = args.out / "qat-run"
    config = DistillConfig(
        student=model, teacher_checkpoint=str(args.teacher), method=args.method,
        # No warm-up of the lr or of DKD's loss: both are for a student starting from random
        # weights, and QAT starts from a trained one.
        epochs=args.epochs, lr=args.lr, warmup_epochs=0.0, dkd_warmup_epochs=0.0,
        batch_size=args.batch_size,
        data=str(args.data), limit_train=args.limit_train, limit_test=args.limit_test,
        qat=True, init_checkpoint=str(args.student), out=str(out), progress=False)
    distill(config, resume=(out / "last.pt").exists())
    return out / "model.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="trained FP32 student")
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--method", default="kd", help="distillation method of the QAT epochs")
    parser.add_argument("--epochs", type=int, default=2, help="QAT epochs")
    parser.add_argument("--lr", type=float, default=0.0005,
                        help="QAT peak learning rate (cosine, no warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runtimes", default="onnx,executorch", help="onnx and/or executorch")
    parser.add_argument("--limit-train", type=int, default=None,
                        help="stratified train subset for the QAT epochs and calibration")
    parser.add_argument("--limit-test", type=int, default=None, help="default: all 10k images")
    parser.add_argument("--threads", type=int, default=2, help="runtime threads for the top-1s")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "qat")
    args = parser.parse_args()

    from kdpipe.data import load_dataset, subset
    from kdpipe.export.base import package_available
    from kdpipe.models import read_checkpoint

    targets = [t for t in args.runtimes.split(",") if t]
    unknown = sorted(set(targets) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtimes {unknown}; choose from {', '.join(RUNTIMES)}")
    if "executorch" in targets and not package_available("executorch"):
        print("executorch is not installed: ONNX rows only", flush=True)
        targets.remove("executorch")
    meta, _ = read_checkpoint(args.student)
    dataset = subset(load_dataset(str(args.data)), limit_train=args.limit_train,
                     limit_test=args.limit_test, seed=0)
    images, labels = dataset.test_images.numpy(), dataset.test_labels.numpy()
    parity = min(1000, len(labels))
    args.out.mkdir(parents=True, exist_ok=True)

    before = export(args.student, targets, "none,int8", args.out / "ptq", dataset, parity)
    qat_checkpoint = distill_qat(args, meta.model)
    after = export(qat_checkpoint, targets, "none,int8", args.out / "qat", dataset, parity)

    def score(result: Any) -> float | str:
        if result is None or result.path is None:
            return f"failed: {result.reason}" if result is not None else "-"
        return top1(result, images, labels, args.threads)

    rows = []
    for target in targets:
        row = {"runtime": RUNTIMES[target], "fp32": score(before.get((target, "none"))),
               "int8_ptq": score(before.get((target, "int8"))),
               "int8_qat": score(after.get((target, "int8"))),
               "qat_fp32": score(after.get((target, "none")))}
        numbers = [row[k] for k in ("fp32", "int8_ptq", "int8_qat")]
        lost = numbers[0] - numbers[1] if all(isinstance(v, float) for v in numbers) else None
        # Only a post-training loss can be recovered: none (or a gain) leaves nothing to share.
        row["recovered"] = (round(100 * (numbers[2] - numbers[1]) / lost, 1)
                            if lost is not None and lost > 0 else "-")
        rows.append(row)
        print(row, flush=True)
    lines = [f"# Quantization-aware distillation, {meta.model}, {len(labels)} test images", "",
             f"Student {args.student.name}, teacher {args.teacher.name}, QAT: {args.method}, "
             f"{args.epochs} epochs, lr {args.lr}, {len(dataset.train_labels)} train images. "
             f"CPU: {cpu_facts().get('cpu', '')}.", "", markdown_table(rows, COLUMNS)]
    atomic.write_text(args.out / "summary.md", "\n".join(lines) + "\n")
    atomic.write_json(args.out / "summary.json", {"machine": cpu_facts(), "rows": rows,
                                                  "epochs": args.epochs, "lr": args.lr,
                                                  "method": args.method,
                                                  "n_test": len(labels)})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
