"""`kdpipe bench --device ssh://...` against a real OpenSSH server on loopback.

The test starts its own `sshd` on 127.0.0.1 and a random high port, with throw-away host and
client keys in a temporary folder; the "device's" Python is this virtual environment's (the
system python3 here has no onnxruntime). Skipped where OpenSSH's server is not installed
(`apt-get install openssh-server openssh-client`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdpipe.bench.bench import run_bench
from kdpipe.bench.ssh import SshTarget
from kdpipe.cli import app
from kdpipe.errors import KdpipeError

from .test_bench import fast_config, image_folder, make_artifacts

SSHD = Path("/usr/sbin/sshd")
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {process.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("sshd did not start listening")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd on loopback; yields the client settings the bench needs."""
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    home = tmp_path_factory.mktemp("sshd")
    keygen = ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f"]
    subprocess.run([*keygen, str(home / "host_key")], check=True)
    subprocess.run([*keygen, str(home / "client_key")], check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(home / "sshd_config")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield {"port": port, "key": str(home / "client_key"),
               "known_hosts": str(home / "known_hosts")}
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("ssh-tiny")
    paths = make_artifacts(base / "artifacts")
    paths["data"] = image_folder(base / "images")
    return paths


def device_config(tiny, sshd, out: Path, **changes):
    user = os.environ.get("USER") or "root"
    settings = dict(device=f"ssh://{user}@127.0.0.1:{sshd['port']}", ssh_key=sshd["key"],
                    ssh_options=[f"UserKnownHostsFile={sshd['known_hosts']}"],
                    remote_python=sys.executable, connect_timeout_s=5)
    return fast_config(tiny, out, **{**settings, **changes})


def test_remote_onnx_bench_comes_back_into_the_report(tiny, sshd, tmp_path):
    config = device_config(tiny, sshd, tmp_path / "out", runtimes=["onnxruntime"],
                           batch_sizes=[1, 4], remote_accuracy=20)
    report, files = run_bench([tiny["onnx"]], config)
    label = f"onnxruntime@ssh://127.0.0.1:{sshd['port']}"
    assert [(r.runtime, r.batch_size, r.status) for r in report.rows] == [
        (label, 1, "ok"), (label, 4, "ok")]
    for row in report.rows:
        assert 0 < row.p50_ms <= row.p99_ms and row.throughput_ips > 0 and row.peak_rss_mb > 0
    # the device scores the same images as the local runtime does
    local, _ = run_bench([tiny["onnx"]], fast_config(tiny, tmp_path / "local",
                                                     runtimes=["onnxruntime"], batch_sizes=[1]))
    assert report.rows[0].top1 == local.rows[0].top1
    assert report.data["n_test"] == 20
    assert report.machine["cpu"] and report.host is not None
    assert report.runtimes[label]
    assert files["json"].is_file()


def test_latency_only_by_default_and_local_only_runtimes_are_skipped(tiny, sshd, tmp_path):
    report, _ = run_bench([tiny["onnx"], tiny["checkpoint"]],
                          device_config(tiny, sshd, tmp_path / "out", batch_sizes=[1]))
    rows = {r.runtime.split("@")[0]: r for r in report.rows}
    assert rows["onnxruntime"].status == "ok" and rows["onnxruntime"].top1 is None
    assert any("latency only" in note for note in report.notes)
    assert rows["eager"].status == "skipped" and "only on the machine" in rows["eager"].reason
    # the ONNX file gets no TensorRT rows: the device could never run them (the checkpoint, which
    # nothing there runs, keeps its rows, each saying why)
    assert [r.runtime.split("@")[0] for r in report.rows if r.format == "onnx"] == [
        "onnxruntime"]
    assert {r.runtime.split("@")[0] for r in report.rows if r.format == "checkpoint"} == {
        "eager", "tensorrt"}


def test_a_refused_connection_is_one_message_and_no_report(tiny, sshd, tmp_path):
    out = tmp_path / "out"
    closed = free_port()
    result = runner.invoke(app, [
        "bench", str(tiny["onnx"]), "--device", f"ssh://root@127.0.0.1:{closed}",
        "--ssh-key", sshd["key"], "--ssh-options", f"UserKnownHostsFile={sshd['known_hosts']}",
        "--connect-timeout-s", "5", "--no-accuracy", "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cannot connect" in result.output and "refused" in result.output.lower()
    assert not out.exists()


def test_a_silent_host_times_out_with_one_message(tiny, tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed")
    with socket.socket() as silent:  # accepts the connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        config = fast_config(tiny, tmp_path / "out", device=f"ssh://root@127.0.0.1:"
                             f"{silent.getsockname()[1]}", connect_timeout_s=2, accuracy=False,
                             ssh_options=[f"UserKnownHostsFile={tmp_path / 'known_hosts'}"])
        with pytest.raises(KdpipeError, match="cannot connect.*timed out"):
            run_bench([tiny["onnx"]], config)
    assert not (tmp_path / "out").exists()


def test_a_device_without_the_runtime_is_refused_before_anything_runs(tiny, sshd, tmp_path):
    bare = Path("/usr/bin/python3")
    if not bare.exists() or subprocess.run([str(bare), "-c", "import onnxruntime"],
                                           capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without onnxruntime to stand for a bare device")
    config = device_config(tiny, sshd, tmp_path / "out", remote_python=str(bare))
    with pytest.raises(KdpipeError, match="lacks.*onnxruntime.*pip install"):
        run_bench([tiny["onnx"]], config)
    assert not (tmp_path / "out").exists()


def test_ssh_urls_parse_and_bad_ones_are_refused():
    target = SshTarget.parse("ssh://pi@raspberrypi.local:2222")
    assert (target.user, target.host, target.port) == ("pi", "raspberrypi.local", 2222)
    assert target.label == "ssh://raspberrypi.local:2222"
    argv = target.ssh_argv(["python3", "-V"])
    assert argv[:1] == ["ssh"] and "BatchMode=yes" in argv and "-p" in argv
    assert "StrictHostKeyChecking=accept-new" in argv and argv[-2:] == ["pi@raspberrypi.local",
                                                                         "python3 -V"]
    assert SshTarget.parse("ssh://[::1]").destination == "[::1]"
    for bad in ("ssh://", "ssh://host:port", "http://host", "ssh://host/path"):
        with pytest.raises(KdpipeError, match="ssh://user@host"):
            SshTarget.parse(bad)
