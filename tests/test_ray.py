"""`kdpipe sweep --executor ray`: cells as Ray tasks on a local Ray instance (2 CPUs), run in
parallel, the same results as the local executor, a killed worker retried and resumed, finished
cells never rerun, and a clear message where Ray is not installed. `kdpipe pipeline --executor
ray`: its training runs and exports as Ray tasks, the same runs, artifacts and report as local,
and a rerun that does nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD
from kdpipe.models import CheckpointMeta, create, save_checkpoint
from kdpipe.pipeline import load_pipeline_config, run_pipeline
from kdpipe.sweep import run_sweep

from .conftest import synthetic_dataset, write_image_folder

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'kdpipe[ray]')")

SWEEP = """
title = "ray smoke"
seeds = [0]
[base]
student = "plaincnn_student"
data = "{data}"
epochs = {epochs}
batch_size = 16
device = "cpu"
threads = 1
compile = false
amp = false
progress = false
[resources]
num_cpus = 1
[[grid]]
method = ["scratch"]
lr = [0.05, 0.1]
"""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    # The workers' environment is fixed here, before conftest's per-test KDPIPE_CACHE: give
    # them the same image cache, away from the user's ~/.cache.
    cache = str(tmp_path_factory.getbasetemp() / "kdpipe-cache")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"KDPIPE_CACHE": cache}})
    yield
    ray.shutdown()


def sweep_file(tmp_path: Path, epochs: int = 3) -> Path:
    data = write_image_folder(synthetic_dataset(n_train=96, n_test=16), tmp_path / "images")
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(data=data, epochs=epochs))
    return path


def summaries(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))}


def without_wall_times(out: Path) -> str:
    """results.md with its last column (wall time, s) blanked: the rest must not depend on where
    the cells ran."""
    return re.sub(r"\| [\d.]+ \|$", "| |", (out / "results.md").read_text(), flags=re.M)


def test_two_cells_run_in_parallel_with_the_local_executors_results(local_ray, tmp_path):
    sweep = sweep_file(tmp_path)
    result = run_sweep(sweep, out=tmp_path / "ray", executor="ray")
    assert sorted(result["ran"]) == ["scratch-lr=0.05-s0", "scratch-lr=0.1-s0"]
    on_ray = summaries(tmp_path / "ray")
    for summary in on_ray.values():
        assert summary["executor"] == "ray" and summary["node"] and summary["node_id"]
    # Both ran at once (2 CPUs, 1 per cell): each started before the other finished.
    (a0, a1), (b0, b1) = [(s["started_s"], s["finished_s"]) for s in on_ray.values()]
    assert a0 < b1 and b0 < a1
    # The same cells with the local executor: the same numbers, the same table.
    run_sweep(sweep, out=tmp_path / "local")
    local = summaries(tmp_path / "local")
    assert {k: v["top1"] for k, v in on_ray.items()} == {k: v["top1"] for k, v in local.items()}
    assert local["scratch-lr=0.1-s0"]["executor"] == "local"
    assert without_wall_times(tmp_path / "ray") == without_wall_times(tmp_path / "local")
    # A second run finds both cells finished and runs none.
    again = run_sweep(sweep, out=tmp_path / "ray", executor="ray")
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(result["ran"])


def test_a_killed_worker_is_retried_and_the_cell_resumes_from_its_last_epoch(local_ray,
                                                                            tmp_path):
    sweep = sweep_file(tmp_path, epochs=4)
    out = tmp_path / "out"
    cell = out / "scratch-lr=0.1-s0"
    killed: list[int] = []

    def kill_after_first_epoch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            metrics = cell / "metrics.jsonl"
            lock = cell / "kdpipe.lock"
            if metrics.exists() and metrics.read_text().count("\n") >= 1 and lock.exists():
                pid = json.loads(lock.read_text() or "{}").get("pid")
                if pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)  # the Ray worker running the cell
                    killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_epoch, daemon=True)
    watcher.start()
    result = run_sweep(sweep, out=out, executor="ray")
    watcher.join(timeout=5)
    assert killed, "the worker was never killed: the test did not exercise a retry"
    assert "scratch-lr=0.1-s0" in result["ran"] and not result["failed"]
    rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # resumed: one row per epoch, in order
    assert json.loads((cell / "summary.json").read_text())["epochs"] == 4


def test_without_ray_the_executor_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    sweep = sweep_file(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--executor", "ray"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "pip install 'kdpipe" in result.output and "ray" in result.output


# --------------------------------------------------------------------------- the pipeline
PIPELINE = """
data = "{data}"
teacher_checkpoint = "{teacher}"
student = "plaincnn_student"
methods = ["kd", "rkd"]
progress = false
export_teacher = false

[train]
epochs = 2
batch_size = 16
device = "cpu"
threads = 1
compile = false
amp = false

[distill]
teacher_cache = "{cache}"

[[export]]
target = "onnx"
quantize = "none"

[export_options]
parity_size = 16
batch_sizes = [1]

[bench]
batch_sizes = [1]
warmup = 1
iters = 3
min_time_s = 0
memory = false
"""
STAGES = ("scratch", "kd", "rkd")
TIMINGS = {"wall_time_s", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb",
           "spread", "noisy", "reason"}


def pipeline_file(tmp_path: Path, executor: str) -> Path:
    """A tiny pipeline (scratch, kd and rkd sharing a teacher cache, one ONNX export each)
    into `tmp_path/<executor>`, with its own teacher cache."""
    data = synthetic_dataset(n_train=64, n_test=16)
    images = write_image_folder(data, tmp_path / "images")
    teacher = tmp_path / "teacher.pt"
    if not teacher.exists():
        meta = CheckpointMeta(model="plaincnn_student", model_kwargs={},
                              num_classes=len(data.classes), classes=list(data.classes),
                              mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD),
                              input_shape=[3, 32, 32])
        torch.manual_seed(0)
        save_checkpoint(teacher, create("plaincnn_student"), meta)
    path = tmp_path / f"{executor}.toml"
    path.write_text(f'out = "{tmp_path / executor}"\nexecutor = "{executor}"\n'
                    + PIPELINE.format(data=images, teacher=teacher,
                                      cache=tmp_path / f"cache-{executor}"))
    return path


def report_rows(out: Path) -> dict[str, list[dict]]:
    """pipeline.json's tables without what depends on the machine's load (times, timing notes)."""
    report = json.loads((out / "pipeline.json").read_text())

    def plain(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]

    return {"models": plain(report["models"]), "artifacts": plain(report["artifacts"]),
            "failed": report["failed_exports"], "bench": plain(report["bench"]["rows"])}


def stage_files(out: Path) -> dict[str, int]:
    """Every file the stages wrote, with its modification time (the report itself left out)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/**/*")
            if p.is_file()}


def test_the_pipeline_on_ray_gives_the_local_executors_runs_artifacts_and_report(local_ray,
                                                                                tmp_path):
    on_ray = run_pipeline(load_pipeline_config(str(pipeline_file(tmp_path, "ray")), {})).parent
    local = run_pipeline(load_pipeline_config(str(pipeline_file(tmp_path, "local")), {})).parent
    for out in (on_ray, local):
        assert all((out / name / "model.pt").exists() for name in STAGES)
        assert sorted(p.relative_to(out).as_posix() for p in out.glob("export/*/*.onnx")) == [
            f"export/{name}/{name}.onnx" for name in sorted(STAGES)]
    assert report_rows(on_ray) == report_rows(local)
    assert [m["name"] for m in report_rows(on_ray)["models"]] == ["teacher", *STAGES]
    # Each stage records where it ran: the runs in summary.json, the exports in stage.json.
    for out, executor in ((on_ray, "ray"), (local, "local")):
        for record in [out / n / "summary.json" for n in STAGES] + [
                out / "export" / n / "stage.json" for n in STAGES]:
            placed = json.loads(record.read_text())
            assert placed["executor"] == executor and placed["node"], record
    ran = {n: json.loads((on_ray / n / "summary.json").read_text()) for n in STAGES}
    assert ran["scratch"]["node_id"]
    # rkd reads the teacher cache kd fills: its task started only once kd had finished.
    assert ran["rkd"]["started_s"] >= ran["kd"]["finished_s"]
    # A second run finds every stage complete and touches none of their files.
    before = stage_files(on_ray)
    run_pipeline(load_pipeline_config(str(tmp_path / "ray.toml"), {}))
    assert stage_files(on_ray) == before


def test_without_ray_the_pipeline_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    config = pipeline_file(tmp_path, "local")
    result = CliRunner().invoke(app, ["pipeline", str(config), "--executor", "ray"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "pip install 'kdpipe[ray]'" in " ".join(result.output.split())
    assert not (tmp_path / "local").exists()  # refused before any stage ran
