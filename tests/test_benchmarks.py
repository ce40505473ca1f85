"""The benchmark scripts still run end to end (tiny ImageFolder, a few steps, no timing checked)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, synthetic_dataset, write_image_folder


def test_train_throughput_reports_both_loops_and_their_ratio(tmp_path):
    folder = write_image_folder(synthetic_dataset(n_train=64, n_test=20), tmp_path / "data")
    out = tmp_path / "throughput.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--data", str(folder),
           "--models", "resnet20", "--batch-size", "8", "--steps", "2", "--warmup", "1",
           "--workers", "1", "--no-compile", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "resnet20" and row["plain_img_s"] > 0 and row["kdpipe_img_s"] > 0
    assert abs(row["ratio"] - row["kdpipe_img_s"] / row["plain_img_s"]) < 1e-9
    assert "resnet20" in done.stdout and "kdpipe precision" in done.stdout


def test_runtimes_compares_artifacts_with_their_checkpoint(tmp_path):
    import torch

    from kdpipe.models import CheckpointMeta, create, save_checkpoint
    from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD

    folder = write_image_folder(synthetic_dataset(n_train=64, n_test=40), tmp_path / "data")
    torch.manual_seed(0)
    meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(ZOO_MEAN), std=list(ZOO_STD),
                          input_shape=[3, 32, 32])
    checkpoint = tmp_path / "student" / "model.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, create("resnet20").eval(), meta)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "runtimes.py"), "--checkpoint",
           str(checkpoint), "--data", str(folder), "--targets", "onnx", "--quantize",
           "none", "--warmup", "1", "--iters", "2", "--min-time-s", "0", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    scores = summary["scores"]
    # The checkpoint agrees with itself; the FP32 ONNX file with the checkpoint on tiny data.
    assert scores["student/model.pt eager"]["agreement"] == 100.0
    onnx = next(v for k, v in scores.items() if k.endswith("onnxruntime") and "int8" not in k)
    assert onnx["agreement"] == 100.0
    figures = summary["figures"]["resnet20"]
    assert figures["fp32_agreement"] == 100.0 and figures["int8_agreement"] is None
    assert figures["ort_vs_eager_b1"] > 0 and figures["litert_vs_ort_int8_b1"] is None
    assert "resnet20: LiteRT INT8 batch-1 p50 / ONNX Runtime INT8: not measured" in done.stdout
