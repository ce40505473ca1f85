"""Third-party output is held back by default (kdpipe.quiet), shown with --verbose and when a
command fails; kdpipe's own messages, warnings and errors always show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kdpipe import quiet
from kdpipe.errors import KdpipeError
from kdpipe.export.base import package_available
from kdpipe.progress import console

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _not_verbose():
    quiet.set_verbose(False)
    yield
    quiet.set_verbose(False)


def make_noise() -> None:
    """One line of each kind the libraries print: C-level, sys.stderr, a library log, a warning."""
    with quiet.native_stderr():
        os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 2 threads.\n")
    print("Converting PyTorch Frontend ==> MIL Ops: 100%", file=sys.stderr)
    logging.getLogger("coremltools.models").warning("Failed to load _MLModelProxy: no module")
    warnings.warn("Torch version has not been tested with coremltools", RuntimeWarning,
                  stacklevel=1)


NOISE = ["threadpool.cpp", "Converting PyTorch Frontend", "Failed to load _MLModelProxy",
         "has not been tested"]


def test_library_output_is_held_back_and_kdpipe_still_shows(capfd):
    level = logging.getLogger("coremltools").level
    with quiet.captured() as capture:
        make_noise()
        console.print("kdpipe: exporting")
        logging.getLogger("kdpipe.data.cache").warning("ignoring damaged image cache")
        held = capture.text()
    err = capfd.readouterr().err
    assert "kdpipe: exporting" in err and "ignoring damaged image cache" in err
    for noise in NOISE:
        assert noise not in err, err
        assert noise in held
    # everything is back as it was
    assert logging.getLogger("coremltools").level == level
    assert logging.getLogger("coremltools").propagate
    os.write(2, b"after\n")
    assert "after" in capfd.readouterr().err


def test_kdpipe_s_own_fd_2_writes_show_outside_library_work(capfd):
    """The trainer's Ctrl-C notice is an os.write(2, ...) from a signal handler."""
    with quiet.captured():
        os.write(2, b"Ctrl-C: stopping after this step\n")
    assert "Ctrl-C: stopping after this step" in capfd.readouterr().err


def test_native_output_is_left_alone_outside_a_command(capfd):
    with quiet.native_stderr():  # a Python API caller: no capture runs
        os.write(2, b"cpuinfo_utils.cpp\n")
    assert "cpuinfo_utils.cpp" in capfd.readouterr().err


def test_a_failure_replays_what_was_held_back_before_the_error(capfd):
    with pytest.raises(KdpipeError), quiet.captured():
        make_noise()
        raise KdpipeError("parity failed")
    err = capfd.readouterr().err
    assert quiet.REPLAY_HEADER in err
    for noise in NOISE:
        assert noise in err, err


def test_ctrl_c_and_a_clean_exit_replay_nothing(capfd):
    with pytest.raises(KeyboardInterrupt), quiet.captured():
        make_noise()
        raise KeyboardInterrupt
    with pytest.raises(SystemExit), quiet.captured():
        make_noise()
        sys.exit(0)
    assert "threadpool" not in capfd.readouterr().err


def test_verbose_lets_everything_through(capfd, caplog):
    quiet.set_verbose(True)
    with quiet.captured() as capture:
        make_noise()
    assert capture is None
    err = capfd.readouterr().err
    for noise in ("threadpool.cpp", "Converting PyTorch Frontend"):
        assert noise in err, err
    assert "Failed to load _MLModelProxy" in caplog.text  # pytest's handler, not stderr, here


def test_a_library_call_s_stdout_goes_to_the_capture_too(capfd):
    with quiet.captured() as capture:
        with quiet.library_stdout():
            print("Collecting tensor data and making histogram ...")
        print("kdpipe result on stdout")
        held = capture.text()
    out = capfd.readouterr().out
    assert "histogram" in held and "histogram" not in out
    assert "kdpipe result on stdout" in out


# ---------------------------------------------------------------- through the command line


def export(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`kdpipe [flags] export` of a random ResNet20 to Core ML and ExecuTorch, in a fresh process
    (a library prints its import-time notices once per process)."""
    from kdpipe.data import CIFAR10_CLASSES
    from kdpipe.models import CheckpointMeta, create, save_checkpoint
    from tests.conftest import synthetic_dataset, write_image_folder

    checkpoint = tmp_path / "resnet20.pt"
    if not checkpoint.exists():
        meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=10,
                              classes=list(CIFAR10_CLASSES), mean=[0.5] * 3, std=[0.25] * 3,
                              input_shape=[3, 32, 32])
        save_checkpoint(checkpoint, create("resnet20").eval(), meta)
        write_image_folder(synthetic_dataset(n_train=10, n_test=10), tmp_path / "images")
    packages = {"coreml": "coremltools", "executorch": "executorch"}
    targets = ",".join(t for t, package in packages.items() if package_available(package))
    argv = [sys.executable, "-m", "kdpipe.cli", *flags, "export", str(checkpoint),
            "--target", targets, "--quantize", "none", "--batch-sizes", "1",
            "--parity-size", "10", "--calibration-data", str(tmp_path / "images"),
            "--out", str(tmp_path / f"out{len(flags)}")]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


@pytest.mark.slow
def test_export_prints_no_library_noise_unless_verbose(tmp_path):
    if not (package_available("coremltools") or package_available("executorch")):
        pytest.skip("neither coremltools nor executorch is installed")
    quiet_run = export(tmp_path)
    assert quiet_run.returncode == 0, quiet_run.stderr
    out = quiet_run.stdout + quiet_run.stderr
    for noise in ("scikit-learn version", "has not been tested with coremltools",
                  "Failed to load _ML", "cpuinfo_utils.cpp", "threadpool.cpp",
                  "Running MIL", "torch.__trace", "_pytree.py"):
        assert noise not in out, out
    assert "exporting" in out and "->" in out  # kdpipe's own lines are there

    loud = export(tmp_path, "--verbose")
    assert loud.returncode == 0, loud.stderr
    if package_available("coremltools"):
        assert "Failed to load _ML" in loud.stderr or "Running MIL" in loud.stderr, loud.stderr
    if package_available("executorch"):
        assert "threadpool.cpp" in loud.stderr or "cpuinfo" in loud.stderr, loud.stderr
