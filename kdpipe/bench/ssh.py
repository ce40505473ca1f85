"""Benchmark on a phone or edge board over `ssh://user@host[:port]`.

kdpipe uses the system's OpenSSH client (`ssh`, `scp`) non-interactively: BatchMode (a key, never
a password prompt), a connect timeout, and StrictHostKeyChecking=accept-new (a new host is
remembered, a changed host key is refused). It copies `remote_runner.py` (standard library +
numpy + the runtime, no kdpipe) and each artifact into a temporary folder on the device, runs it
with the device's Python, reads back its JSON, and removes the folder.

Every problem (refused or timed-out connection, no Python, a missing runtime, a runner error) is a
`KdpipeError` raised before any report is written, so a failed remote bench leaves no partial one.
Everything the device needs is checked before the first artifact is timed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kdpipe.bench import remote_runner
from kdpipe.bench.devices import DEVICES, Plan, RunOutcome, runnable_batches
from kdpipe.errors import KdpipeError
from kdpipe.report.bench_report import EMULATED_NOTE
from kdpipe.runtime import Runtime
from kdpipe.runtime.artifact import Artifact
from kdpipe.runtime.chunks import eval_batch_size
from kdpipe.runtime.latency import LatencyStats

SSH_FAILED = 255  # ssh's own exit status for connection and authentication errors
NOT_FOUND = 127  # the remote shell's "command not found"
RUNNER = "kdpipe_runner.py"
LATENCY_ONLY_NOTE = ("accuracy on the device was not measured (latency only); "
                     "pass --remote-accuracy N to ship N test images with the runner")


@dataclass(frozen=True)
class SshTarget:
    """How to reach one device: the parsed `ssh://` URL plus the client options."""

    host: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    options: tuple[str, ...] = ()
    connect_timeout_s: int = 10

    @classmethod
    def parse(cls, url: str, **client: Any) -> SshTarget:
        """`ssh://user@host[:port]` (an IPv6 host in brackets) -> `SshTarget`."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
            raise KdpipeError(f"bad device {url!r}: expected ssh://user@host or "
                              "ssh://user@host:port")
        return cls(host=parts.hostname, user=parts.username, port=port, **client)

    @property
    def label(self) -> str:
        """`ssh://host[:port]`, as runtime names in the report carry it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{host}" + (f":{self.port}" if self.port else "")

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def client_options(self) -> list[str]:
        """Options shared by ssh and scp (the port flag differs: -p vs -P)."""
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "StrictHostKeyChecking=accept-new"]
        if self.key:
            args += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        for option in self.options:
            args += ["-o", option]
        return args

    def ssh_argv(self, remote_command: list[str]) -> list[str]:
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh", *self.client_options(), *port, self.destination, shlex.join(remote_command)]

    def scp_argv(self, source: Path, remote_path: str) -> list[str]:
        port = ["-P", str(self.port)] if self.port else []
        return ["scp", "-q", *self.client_options(), *port, str(source),
                f"{self.destination}:{remote_path}"]

    def run(self, remote_command: list[str], timeout_s: float) -> str:
        """Run a command on the device; its stdout, or a `KdpipeError` that says what to fix."""
        return self._call(self.ssh_argv(remote_command), timeout_s, " ".join(remote_command[:2]))

    def copy(self, source: Path, remote_path: str, timeout_s: float) -> None:
        """Copy one local file to `remote_path` (a file name, so the copy can be renamed)."""
        self._call(self.scp_argv(source, remote_path), timeout_s, f"copying {source.name}")

    def _call(self, argv: list[str], timeout_s: float, what: str) -> str:
        if shutil.which(argv[0]) is None:
            raise KdpipeError(f"`{argv[0]}` not found: benchmarking over ssh:// needs the OpenSSH "
                              "client (apt-get install openssh-client, or your OS's package)")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise KdpipeError(f"{self.label}: {what} timed out after {timeout_s:.0f} s; check that "
                              "the device is awake and reachable") from None
        if done.returncode != 0:
            raise KdpipeError(self._explain(done, what))
        return done.stdout

    def _explain(self, done: subprocess.CompletedProcess[str], what: str) -> str:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode == SSH_FAILED or "Connection closed" in last:
            return (f"cannot connect to {self.label} ({last}); check that the host is up and "
                    "reachable, the port, the user and the key (--ssh-key): kdpipe runs ssh "
                    "with BatchMode=yes, so the key must log in without a password prompt")
        if done.returncode == NOT_FOUND:
            return (f"{self.label}: {what}: {last}; install Python 3 on the device or pass "
                    "--remote-python with the path of one")
        return f"{self.label}: {what} failed: {last}"


def _module(backend: str | None) -> str:
    """The module a runner backend imports (its key in the probe's `packages`)."""
    return remote_runner.BACKEND_PACKAGES.get(backend or "", backend or "")


@DEVICES.register("ssh")
class SshDevice:
    """A device reached over ssh; the runner does the timing there, rows come back here."""

    def __init__(self, spec: str, *, ssh_key: str | None = None, remote_python: str = "python3",
                 ssh_options: tuple[str, ...] = (), connect_timeout_s: int = 10,
                 remote_timeout_s: float = 1800, remote_accuracy: int = 0, **_: Any) -> None:
        self.target = SshTarget.parse(spec, key=ssh_key, options=tuple(ssh_options),
                                      connect_timeout_s=connect_timeout_s)
        self.python = remote_python
        self.timeout_s = remote_timeout_s
        self.remote_accuracy = remote_accuracy
        self.label = self.target.label
        self.remote_dir: str | None = None
        self.info: dict[str, Any] = {}
        self._uploaded: dict[Path, str] = {}
        self._local = tempfile.TemporaryDirectory(prefix="kdpipe-ssh-")

    def __enter__(self) -> SshDevice:
        """Connect, make a remote folder, copy the runner and probe the device."""
        try:
            made = self.target.run([self.python, "-c", "import tempfile; "
                                    "print(tempfile.mkdtemp(prefix='kdpipe-bench-'))"],
                                   self.target.connect_timeout_s + 60)
            self.remote_dir = made.strip().splitlines()[-1]
            # Under a name that cannot shadow a module on the device's import path.
            self.target.copy(Path(remote_runner.__file__), self._remote(RUNNER), self.timeout_s)
            self.info = self._json(self.target.run(self._runner("probe"), 120), "probe")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the remote folder (best effort: the device may be gone) and the local one."""
        if self.remote_dir:
            try:
                self.target.run([self.python, "-c", "import shutil, sys; "
                                 "shutil.rmtree(sys.argv[1], ignore_errors=True)",
                                 self.remote_dir], 60)
            except KdpipeError:
                pass
            self.remote_dir = None
        self._local.cleanup()

    def machine(self, threads: int) -> dict[str, Any]:
        keys = ("cpu", "cpu_count", "platform", "machine", "python")
        return {**{k: self.info.get(k) for k in keys}, "threads": threads,
                "emulated": bool(self.info.get("emulated"))}

    def runtime_label(self, runtime: Runtime) -> str:
        return f"{runtime.name}@{self.label}"

    def runs(self, runtime: Runtime) -> bool:
        return runtime.remote_backend is not None

    def versions(self, runtimes: list[Runtime]) -> dict[str, str | None]:
        packages = self.info.get("packages", {})
        return {self.runtime_label(r): packages.get(_module(r.remote_backend))
                for r in runtimes if r.remote_backend}

    def prepare(self, work: list[tuple[Artifact, Runtime]]) -> None:
        """Refuse up front when the device lacks numpy or a runtime that some artifact needs."""
        packages = self.info.get("packages", {})
        needed = {"numpy": "the runner"}
        for artifact, rt in work:
            if rt.remote_backend:
                needed.setdefault(_module(rt.remote_backend), artifact.name)
        missing = [name for name in needed if not packages.get(name)]
        if missing:
            uses = "; ".join(f"{name} for {needed[name]}" for name in missing)
            # pip takes distribution names: the module ai_edge_litert is ai-edge-litert.
            install = " ".join(name.replace("_", "-") for name in missing)
            raise KdpipeError(
                f"{self.label}: {self.python} lacks {', '.join(missing)} ({uses}); run "
                f"`pip install {install}` on the device, or pass --remote-python with "
                "the path of a Python that has them")

    def run(self, artifact: Artifact, runtime: Runtime, plan: Plan) -> RunOutcome:
        if runtime.remote_backend is None:
            return RunOutcome(status="skipped", reason=(
                f"{runtime.name} runs only on the machine kdpipe runs on; over ssh:// kdpipe "
                "benches ONNX (onnxruntime), ExecuTorch and LiteRT (litert) files"))
        batches, skipped = runnable_batches(artifact, plan.batch_sizes)
        argv = self._runner("bench", *self._bench_args(artifact, runtime, plan, batches))
        result = self._json(self.target.run(argv, self.timeout_s), f"bench of {artifact.name}")
        outcome = RunOutcome(top1=result.get("top1"), skipped_batches=skipped,
                             peak_rss_mb=(result.get("peak_rss_bytes") or 0) / 2**20 or None)
        for stats in result["latency"]:
            outcome.latency[stats["batch_size"]] = LatencyStats(**stats)
        if result.get("top1") is None:
            outcome.notes.append(LATENCY_ONLY_NOTE)
        if self.info.get("emulated"):  # functional proof only: every row says so
            outcome.reason = EMULATED_NOTE
            outcome.notes.append(f"{self.label} is emulated (qemu): its rows prove the files run "
                                 "there and score as here; their latencies are not "
                                 "representative of the hardware")
        return outcome

    def _bench_args(self, artifact: Artifact, runtime: Runtime, plan: Plan,
                    batches: list[int]) -> list[str]:
        args = ["--backend", str(runtime.remote_backend), "--artifact", self._upload(artifact.path),
                "--input-shape", ",".join(map(str, artifact.input_shape)),
                "--batch-sizes", ",".join(map(str, batches)), "--threads", str(plan.threads),
                "--warmup", str(plan.warmup), "--iters", str(plan.iters),
                "--min-time-s", str(plan.min_time_s)]
        if plan.time_budget_s is not None:
            args += ["--budget-s", str(plan.time_budget_s)]
        if artifact.mean is not None and artifact.std is not None:
            args += ["--mean", ",".join(map(str, artifact.mean)),
                     "--std", ",".join(map(str, artifact.std))]
        if self.remote_accuracy and plan.images is not None:
            args += [*self._upload_images(plan), "--eval-batch", str(eval_batch_size(artifact))]
            if artifact.batch_sizes is not None:
                args.append("--pad")
        return args

    def _upload_images(self, plan: Plan) -> list[str]:
        """Ship the first `remote_accuracy` test images (already a stratified subset) once."""
        assert plan.images is not None
        local = Path(self._local.name)
        images, labels = local / "images.npy", local / "labels.npy"
        if not images.exists():
            np.save(images, plan.images.images[: self.remote_accuracy])
            np.save(labels, plan.images.labels[: self.remote_accuracy].astype(np.int64))
        return ["--images", self._upload(images), "--labels", self._upload(labels)]

    def _upload(self, path: Path) -> str:
        """Copy a file once; numbered, so two artifacts of the same name do not collide."""
        if path not in self._uploaded:
            remote = self._remote(f"{len(self._uploaded)}-{path.name}")
            self.target.copy(path, remote, self.timeout_s)
            self._uploaded[path] = remote
        return self._uploaded[path]

    def _runner(self, *args: str) -> list[str]:
        return [self.python, self._remote(RUNNER), *args]

    def _remote(self, name: str) -> str:
        return f"{self.remote_dir}/{name}"

    def _json(self, stdout: str, what: str) -> dict[str, Any]:
        try:
            return json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise KdpipeError(f"{self.label}: the {what} printed no result "
                              f"({stdout.strip()[-200:] or 'nothing'})") from None
