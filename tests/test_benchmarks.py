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
