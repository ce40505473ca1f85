"""`kdpipe bench --device ssh://...` on an emulated arm64 board (benchmarks/arm64_board.sh).

Opt-in: building the board's Debian arm64 root filesystem takes several minutes and needs root,
qemu-user-static, binfmt_misc and network access, so the suite never builds one. Prepare it once
with `benchmarks/arm64_board.sh --cache DIR build`, then run with `KDPIPE_ARM64_ROOTFS=DIR`
(the cache folder, or its rootfs/ inside). The test starts the board's sshd on a free loopback
port when it is not running (and stops it again), benches a tiny model's ONNX file and its FP32
and INT8 LiteRT files there and here, and checks that the aarch64 onnxruntime and ai-edge-litert
score the same images the same. Emulated latencies are not checked: they say nothing about real
arm64 hardware; every board row must say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from kdpipe.bench.bench import run_bench
from kdpipe.export.targets import TARGETS
from kdpipe.report.bench_report import EMULATED_NOTE

from .conftest import synthetic_dataset
from .test_bench import fast_config, image_folder, make_artifacts
from .test_ssh import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "arm64_board.sh"
REMOTE_PYTHON = "/opt/kdpipe-venv/bin/python3"  # the venv arm64_board.sh builds in the rootfs
ENV = "KDPIPE_ARM64_ROOTFS"


def board_cache() -> Path:
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(f"opt-in: set {ENV} to a board prepared with `benchmarks/arm64_board.sh "
                    "--cache DIR build` (an emulated arm64 rootfs, built outside the repository)")
    cache = Path(value)
    if cache.name == "rootfs":
        cache = cache.parent
    if not (cache / ".rootfs-done").exists() or not (cache / ".venv-done").exists():
        pytest.skip(f"{ENV}={value} is not a finished board: run `benchmarks/arm64_board.sh "
                    f"--cache {cache} build`")
    if os.geteuid() != 0:
        pytest.skip("the emulated board needs root (chroot and mount)")
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed (apt-get install openssh-client)")
    binfmt = script(cache, "binfmt")  # mounts binfmt_misc, registers and enables qemu-aarch64
    if binfmt.returncode != 0:
        pytest.skip(f"this machine cannot run aarch64 binaries: {binfmt.stderr.strip()[-300:]}")
    return cache


def script(cache: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess:
    argv = ["bash", str(SCRIPT), "--cache", str(cache), *(["--port", str(port)] if port else []),
            *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def board():
    cache = board_cache()
    started = script(cache, "status").returncode != 0
    if started:
        done = script(cache, "start", port=free_port())
        assert done.returncode == 0, done.stderr[-2000:]
    port = int((cache / "sshd.port").read_text())
    try:
        yield {"port": port, "key": str(cache / "keys" / "id_ed25519"),
               "known_hosts": str(cache / "known_hosts"),
               "packages": (cache / ".venv-done").read_text()}
    finally:
        if started:
            script(cache, "stop")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("arm64-tiny")
    paths = make_artifacts(base / "artifacts")
    paths["data"] = image_folder(base / "images")
    return paths


@pytest.fixture(scope="module")
def tflite(tiny, tmp_path_factory) -> list[Path]:
    """The tiny model's FP32 and INT8 LiteRT files for batch size 1 (no parity check: the test
    compares the board with this machine, not with PyTorch)."""
    ok, why = TARGETS.get("litert").available()
    if not ok:
        pytest.skip(why)
    from kdpipe.export import export_checkpoint

    out = tmp_path_factory.mktemp("arm64-tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converters' deprecation notices
        results = export_checkpoint(tiny["checkpoint"], "litert", "none,int8", out, parity=False,
                                    batch_sizes="1", name="tiny", calibration_size=32,
                                    dataset=synthetic_dataset(n_train=32, n_test=8))
    return [r.path for r in results]


def board_config(tiny, board, out: Path, **changes):
    """Bench options that reach the board: batch 1, a few timed calls, top-1 on 20 images."""
    return fast_config(tiny, out, batch_sizes=[1], warmup=1, iters=5, remote_accuracy=20,
                       device=f"ssh://root@127.0.0.1:{board['port']}", ssh_key=board["key"],
                       ssh_options=[f"UserKnownHostsFile={board['known_hosts']}"],
                       remote_python=REMOTE_PYTHON, connect_timeout_s=20, remote_timeout_s=600,
                       **changes)


def test_the_emulated_arm64_board_scores_like_this_machine(tiny, board, tmp_path):
    remote = board_config(tiny, board, tmp_path / "board", runtimes=["onnxruntime"])
    report, files = run_bench([tiny["onnx"]], remote)
    label = f"onnxruntime@ssh://127.0.0.1:{board['port']}"
    assert [(r.runtime, r.batch_size, r.status) for r in report.rows] == [(label, 1, "ok")]
    assert report.machine["machine"] == "aarch64"
    assert report.runtimes[label]  # the board's onnxruntime version
    local, _ = run_bench([tiny["onnx"]], fast_config(tiny, tmp_path / "local",
                                                     runtimes=["onnxruntime"], batch_sizes=[1]))
    assert report.rows[0].top1 == local.rows[0].top1
    assert report.data["n_test"] == 20
    assert files["json"].is_file()


def test_litert_files_score_on_the_board_as_here(tiny, tflite, board, tmp_path):
    if "ai-edge-litert" not in board["packages"]:
        pytest.skip("the board's venv has no ai-edge-litert: rebuild it with "
                    "`benchmarks/arm64_board.sh --cache DIR build`")
    report, _ = run_bench(tflite, board_config(tiny, board, tmp_path / "board",
                                               runtimes=["litert"]))
    label = f"litert@ssh://127.0.0.1:{board['port']}"
    assert sorted((r.runtime, r.quantization, r.status) for r in report.rows) == [
        (label, "fp32", "ok"), (label, "int8", "ok")]
    assert report.machine["machine"] == "aarch64" and report.machine["emulated"]
    assert all(r.reason == EMULATED_NOTE for r in report.rows)
    assert report.runtimes[label]  # the board's ai-edge-litert version
    local, _ = run_bench(tflite, fast_config(tiny, tmp_path / "local", runtimes=["litert"],
                                             batch_sizes=[1]))
    assert {r.name: r.top1 for r in report.rows} == {r.name: r.top1 for r in local.rows}
