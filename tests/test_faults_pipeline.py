"""The fault suite, part two: pipeline, sweep, export, bench and deploy under faults.

kdpipe deletes only what it wrote, one process owns a folder, file system errors are one line
naming the path, and an artifact is what its sidecar says. Real child processes (the `CHILD` of
`test_faults`, with one more fault point: `parity`, right after an export's parity check, while
the artifact is still in its staging folder), real kill -9 and real full disks (tmpfs); tiny
synthetic data, a tiny model, one thread.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import kdpipe.sweep
from kdpipe import runlock
from kdpipe.cli import app
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD
from kdpipe.errors import KdpipeError
from kdpipe.export import ExportFailed, export_checkpoint
from kdpipe.export.targets import TARGETS
from kdpipe.models import CheckpointMeta, create, save_checkpoint
from kdpipe.pipeline import run_stage

from .conftest import synthetic_dataset, write_image_folder
from .test_faults import CHILD, _unshare_tmpfs, run_child, spawn, wait_ready

EXPORT_FAULT = '''
if where == "parity":
    import kdpipe.export.api
    kdpipe.export.api._parity = pause_after(kdpipe.export.api._parity)

from kdpipe.cli import main
'''
NAME = "plaincnn_student.onnx"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.getbasetemp()
    child = base / "fault_child_pipeline.py"
    child.write_text(CHILD.replace("\nfrom kdpipe.cli import main\n", EXPORT_FAULT, 1))
    return {**os.environ, "OMP_NUM_THREADS": "1", "KDPIPE_CACHE": str(base / "kdpipe-cache"),
            "KDPIPE_CHILD": str(child), "COLUMNS": "500"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(synthetic_dataset(n_train=64, n_test=20),
                              tmp_path_factory.mktemp("faults-pipeline") / "images")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints of the same tiny model (other seeds): `a.pt` and `b.pt`."""
    folder = tmp_path_factory.mktemp("checkpoints")
    classes = synthetic_dataset(n_train=10, n_test=10).classes
    meta = CheckpointMeta(model="plaincnn_student", model_kwargs={}, num_classes=len(classes),
                          classes=list(classes), mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD),
                          input_shape=[3, 32, 32])
    paths = []
    for seed, name in enumerate(("a.pt", "b.pt")):
        torch.manual_seed(seed)
        save_checkpoint(folder / name, create("plaincnn_student"), meta)
        paths.append(folder / name)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> Path:
    """`a.pt` as ONNX fp32 with its sidecar (no parity check: its runtime loads it in bench)."""
    out = tmp_path_factory.mktemp("exported")
    export_checkpoint(checkpoints[0], "onnx", "none", out, parity=False, batch_sizes=[1])
    return out / NAME


def export_args(checkpoint: Path, out: Path, images: Path, quantize: str = "none") -> list[str]:
    return ["export", str(checkpoint), "--target", "onnx", "--quantize", quantize, "--out",
            str(out), "--calibration-data", str(images), "--parity-size", "20",
            "--calibration-size", "32", "--batch-sizes", "1"]


def copy_artifact(artifact: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(artifact, folder / artifact.name)
    shutil.copy2(artifact.with_name(artifact.name + ".json"), folder / (artifact.name + ".json"))
    return folder / artifact.name


class Holder:
    """Another live process holding `runlock` on a folder (this process's own holds are
    re-entrant, so only another process can be refused)."""

    def __init__(self, folder: Path) -> None:
        code = ("import sys; from kdpipe import runlock; runlock.acquire(sys.argv[1]); "
                "print('READY', flush=True); sys.stdin.readline()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "READY"

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.communicate("\n", timeout=30)


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --------------------------------------------------------------------------- interruption
def test_kill_9_during_an_export_leaves_staging_that_the_next_run_removes(
        env, images, checkpoints, tmp_path):
    out = tmp_path / "export"
    rc, output = run_child(env, export_args(checkpoints[0], out, images), "parity:1",
                           signal.SIGKILL)
    assert rc == -signal.SIGKILL, output
    [staging] = list(out.glob(".export-*"))
    assert (staging / NAME).exists() and not (out / NAME).exists()  # killed before publishing
    with Holder(out / ".export-live"):  # a live export's staging folder: left alone
        result = CliRunner().invoke(app, export_args(checkpoints[0], out, images))
        assert result.exit_code == 0, result.output
        assert (out / ".export-live").is_dir()
    shown = " ".join(result.output.split())
    assert f"removed {staging}, the staging folder of an export that was stopped" in shown
    assert not staging.exists() and (out / NAME).exists()
    assert json.loads((out / (NAME + ".json")).read_text())["parity"]["passed"] is True


# --------------------------------------------------------------------------- bad input
def tiny_pipeline(tmp_path: Path, images: Path, teacher: Path) -> Path:
    config = tmp_path / "pipeline.toml"
    config.write_text(f"""
out = "{tmp_path / 'report'}"
data = "{images}"
teacher_checkpoint = "{teacher}"
student = "plaincnn_student"
methods = ["kd"]
progress = false
export_teacher = false

[train]
epochs = 1
batch_size = 16
device = "cpu"
threads = 1
amp = false
""")
    return config


def test_a_users_folder_inside_the_pipeline_out_is_refused_and_left_intact(
        images, checkpoints, tmp_path):
    config = tiny_pipeline(tmp_path, images, checkpoints[0])
    mine = tmp_path / "report" / "scratch"
    (mine / "earlier").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "earlier" / "model.pt").write_bytes(b"an earlier run")
    result = CliRunner().invoke(app, ["pipeline", str(config)])
    assert result.exit_code == 2, result.output
    line = " ".join(one_error_line(result.output).split())
    assert str(mine) in line and "notes.txt" in line and "deletes only what it wrote" in line
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "earlier" / "model.pt").read_bytes() == b"an earlier run"
    assert not (tmp_path / "report" / runlock.LOCK_NAME).exists()  # the lock went with it


def test_run_stage_clears_only_its_own_folders(tmp_path):
    calls = []
    work = calls.append
    run_stage(tmp_path / "empty", {"a": 1}, work)  # missing: made, stage.json first
    (tmp_path / "bare").mkdir()
    run_stage(tmp_path / "bare", {"a": 1}, work)  # empty: nothing to lose, used
    (tmp_path / "empty" / "old-output.txt").write_text("from spec a=1")
    run_stage(tmp_path / "empty", {"a": 2}, work)  # kdpipe's folder of another spec: cleared
    assert not (tmp_path / "empty" / "old-output.txt").exists()
    assert run_stage(tmp_path / "empty", {"a": 2}, work) is False  # complete: skipped
    assert calls == [False, False, False]
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "stage.json").write_text("my own stage notes, not JSON")
    with pytest.raises(KdpipeError, match="kdpipe did not create"):
        run_stage(tmp_path / "user", {"a": 1}, work)
    assert (tmp_path / "user" / "stage.json").read_text() == "my own stage notes, not JSON"


# --------------------------------------------------------------------------- concurrency
def test_two_pipelines_on_one_out_the_second_is_refused(env, images, checkpoints, tmp_path):
    config = tiny_pipeline(tmp_path, images, checkpoints[0])
    first = spawn(env, ["pipeline", str(config)], "forward:1")
    try:
        wait_ready(first)  # training its scratch student, holding report/ and report/scratch/
        result = CliRunner().invoke(app, ["pipeline", str(config)])
    finally:
        first.kill()
        first.wait()
    assert result.exit_code == 2, result.output
    line = " ".join(one_error_line(result.output).split())
    assert f"process {first.pid}" in line and str(tmp_path / "report") in line


def test_a_sweep_holds_its_folder_while_its_cells_hold_theirs(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[base]\nteacher_checkpoint = "t.pt"\nstudent = "resnet20"\nepochs = 1\n\n'
                     '[[grid]]\nmethod = ["scratch"]\n')
    out = tmp_path / "out"
    seen = []

    def distill(config, *, resume=False):  # what the trainer does: lock its own run folder
        with runlock.hold(config.out):
            root = json.loads((out / runlock.LOCK_NAME).read_text())
            cell = json.loads((Path(config.out) / runlock.LOCK_NAME).read_text())
            seen.append((root["pid"], cell["pid"]))
            (Path(config.out) / "summary.json").write_text(json.dumps(
                {"top1": 50.0, "teacher": "t", "teacher_top1": 60.0, "params": 1, "macs": 1,
                 "epochs": 1, "wall_time_s": 1.0}))

    monkeypatch.setattr(kdpipe.sweep, "distill", distill)
    with Holder(out), pytest.raises(KdpipeError, match="is in use by process"):
        kdpipe.sweep.run_sweep(sweep, out=out)
    kdpipe.sweep.run_sweep(sweep, out=out)
    assert seen == [(os.getpid(), os.getpid())]
    assert not (out / runlock.LOCK_NAME).exists()


# --------------------------------------------------------------------------- artifacts
def test_bench_with_an_artifact_that_does_not_load_shows_it_and_exits_non_zero(
        exported, images, tmp_path):
    good = copy_artifact(exported, tmp_path / "good")
    bad = copy_artifact(exported, tmp_path / "bad")
    bad.write_bytes(bad.read_bytes()[:1000])  # cut short, its sidecar as it was
    result = CliRunner().invoke(app, [
        "bench", str(good), str(bad), "--data", str(images), "--batch-sizes", "1",
        "--warmup", "1", "--iters", "2", "--min-time-s", "0", "--no-memory", "--no-progress",
        "--threads", "1", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 1, result.output
    shown = " ".join(result.output.split())
    assert f"failed: bad/{NAME} on onnxruntime:" in shown, shown
    assert f"failed: good/{NAME}" not in shown
    assert re.search(r"error: 1 of \d+ runs failed", shown) and "Traceback" not in shown
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    outcomes = {(r["name"], r["status"]) for r in rows}  # other runtimes may add skipped rows
    assert {(f"good/{NAME}", "ok"), (f"bad/{NAME}", "failed")} <= outcomes
    assert (f"bad/{NAME}", "ok") not in outcomes


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_deploy_refuses_an_artifact_that_is_not_what_its_sidecar_says(exported, tmp_path, damage):
    artifact = copy_artifact(exported, tmp_path / "export")
    data = bytearray(artifact.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:  # same size, one byte flipped
        data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["deploy", str(artifact), "--out", str(tmp_path / "app")])
    assert result.exit_code == 2, result.output
    line = " ".join(one_error_line(result.output).split())
    assert str(artifact) in line and "re-export it or copy it again" in line
    assert ("bytes but" in line) == (damage == "truncated")
    assert not (tmp_path / "app").exists()


def test_a_failed_export_removes_the_artifact_another_checkpoint_left_under_its_name(
        exported, checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "export"
    earlier = copy_artifact(exported, out)  # exported from a.pt
    onnx = TARGETS.get("onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(onnx, "export", broken)
    with pytest.raises(ExportFailed) as same:  # the same checkpoint: its last good file stays
        export_checkpoint(checkpoints[0], "onnx", "none", out, parity=False, batch_sizes=[1])
    assert earlier.exists() and "removed" not in str(same.value)
    with pytest.raises(ExportFailed) as other:  # another checkpoint under the same name
        export_checkpoint(checkpoints[1], "onnx", "none", out, parity=False, batch_sizes=[1])
    assert f"removed the earlier {NAME} of another checkpoint" in str(other.value)
    assert not earlier.exists() and not (out / (NAME + ".json")).exists()
    assert list(out.glob(".export-*")) == []


# --------------------------------------------------------------------------- disk
def test_out_under_a_regular_file_is_one_line_naming_the_path(images, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(app, ["train", "--model", "plaincnn_student", "--data",
                                      str(images), "--epochs", "1", "--device", "cpu",
                                      "--out", str(tmp_path / "file" / "run")])
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert f"cannot write {tmp_path / 'file'}" in line and "Not a directory" in line


def test_a_full_disk_during_int8_and_a_read_only_out_are_one_line_each(
        env, images, checkpoints, exported, tmp_path):
    """The fp32 file fits on the small disk, the int8 step's files do not: the run stops with
    the real cause (not protobuf's "Wire format was corrupt"), keeping the fp32 file; a train
    into a read-only file system says so."""
    prefix = _unshare_tmpfs()
    disk, ro, kept = tmp_path / "disk", tmp_path / "ro", tmp_path / "kept"
    disk.mkdir()
    ro.mkdir()
    size_kib = (exported.stat().st_size + 48 * 1024) // 1024  # fp32 + sidecars, no int8 room
    child = [sys.executable, env["KDPIPE_CHILD"]]
    export = shlex.join([*child, *export_args(checkpoints[0], disk / "out", images,
                                              "none,int8")])
    train = shlex.join([*child, "train", "--model", "plaincnn_student", "--data", str(images),
                        "--epochs", "1", "--device", "cpu", "--threads", "1", "--no-progress",
                        "--out", str(ro / "run")])
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {disk} && "
              f"mount -t tmpfs -o ro,size=64k tmpfs {ro} && "
              f"{export} 2>&1; echo EXPORT-RC=$?; cp -a {disk / 'out'} {kept}; "
              f"{train} 2>&1; echo TRAIN-RC=$?")  # one stream, in order
    proc = subprocess.run([*prefix, script], env={**env, "KDPIPE_FAULT": ""},
                          capture_output=True, text=True, timeout=240)
    shown = proc.stdout + proc.stderr
    export_part, _, train_part = shown.partition("EXPORT-RC=")
    assert not train_part.startswith("0"), shown
    line = one_error_line(export_part)
    assert "No space left on device" in line and str(disk / "out") in line, shown
    assert "Wire format" not in shown
    assert (kept / NAME).exists() and (kept / (NAME + ".json")).exists()  # fp32: kept
    assert list(kept.glob(".export-*")) == [] and not (kept / "plaincnn_student.int8.onnx").exists()
    train_part = train_part.split("\n", 1)[1]
    assert "TRAIN-RC=1" in train_part, shown
    line = one_error_line(train_part)
    assert f"cannot write {ro / 'run'}" in line and "Read-only file system" in line, shown
