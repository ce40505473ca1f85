"""`kdpipe bench --device ssh://...` on an emulated arm64 board (benchmarks/arm64_board.sh).

Opt-in: building the board's Debian arm64 root filesystem takes several minutes and needs root,
qemu-user-static, binfmt_misc and network access, so the suite never builds one. Prepare it once
with `benchmarks/arm64_board.sh --cache DIR build`, then run with `KDPIPE_ARM64_ROOTFS=DIR`
(the cache folder, or its rootfs/ inside). The test starts the board's sshd on a free loopback
port when it is not running (and stops it again), benches a tiny ONNX model there and here, and
checks that the aarch64 onnxruntime scores the same images the same. Emulated latencies are not
checked: they say nothing about real arm64 hardware.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kdpipe.bench.bench import run_bench

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
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc",
                        "/proc/sys/fs/binfmt_misc"], capture_output=True)
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("binfmt_misc has no qemu-aarch64 entry (apt-get install qemu-user-static "
                    "binfmt-support)")
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
               "known_hosts": str(cache / "known_hosts")}
    finally:
        if started:
            script(cache, "stop")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("arm64-tiny")
    paths = make_artifacts(base / "artifacts")
    paths["data"] = image_folder(base / "images")
    return paths


def test_the_emulated_arm64_board_scores_like_this_machine(tiny, board, tmp_path):
    remote = fast_config(tiny, tmp_path / "board", runtimes=["onnxruntime"], batch_sizes=[1],
                         warmup=1, iters=5, remote_accuracy=20,
                         device=f"ssh://root@127.0.0.1:{board['port']}", ssh_key=board["key"],
                         ssh_options=[f"UserKnownHostsFile={board['known_hosts']}"],
                         remote_python=REMOTE_PYTHON, connect_timeout_s=20,
                         remote_timeout_s=600)
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
