"""The fault suite: real processes, real signals, real full disks; nothing lost, nothing silent.

Each run is the real `kdpipe` CLI in a child process on a tiny synthetic image folder (64 train
images, batches of 16: 4 steps an epoch, 3 epochs, 1 thread, fp32, no compile), so runs are
bit-for-bit reproducible on CPU. To deliver a signal at an exact moment the child wraps one
internal function (test side only, see `CHILD`): the n-th time the run passes it, the child prints
FAULT-READY and waits for a line on stdin while the test signals it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdpipe import runlock
from kdpipe.cli import app
from kdpipe.errors import KdpipeError
from kdpipe.models import load_checkpoint, read_checkpoint
from kdpipe.train import TrainConfig, Trainer, train_baseline
from kdpipe.train.distill import DistillConfig, distill

from .conftest import synthetic_dataset, write_image_folder

CHILD = r'''
"""`kdpipe` with one fault point: KDPIPE_FAULT="<where>:<n>" pauses right after the n-th pass
through <where> (forward: a training forward, BatchNorm statistics already moved; evaluate: an
end-of-epoch evaluation; row: a metrics.jsonl append; last: a last.pt save)."""
import os
import sys
from pathlib import Path

import kdpipe.atomic
import kdpipe.train.trainer
import kdpipe.train.trainer_objective

where, _, n = os.environ.get("KDPIPE_FAULT", "").partition(":")
calls = 0


def pause_after(fn, counts=lambda *args: True):
    def wrapper(*args, **kwargs):
        global calls
        result = fn(*args, **kwargs)
        if counts(*args):
            calls += 1
            if calls == int(n):
                print("FAULT-READY", flush=True)
                sys.stdin.readline()  # the test signals this process, then writes a line
        return result
    return wrapper


if where == "forward":
    cls = kdpipe.train.trainer_objective.CrossEntropyObjective
    cls.forward = pause_after(cls.forward)
elif where == "evaluate":
    kdpipe.train.trainer.evaluate = pause_after(kdpipe.train.trainer.evaluate)
elif where == "row":
    kdpipe.atomic.append_jsonl = pause_after(kdpipe.atomic.append_jsonl)
elif where == "last":
    kdpipe.train.trainer.save_checkpoint = pause_after(
        kdpipe.train.trainer.save_checkpoint, lambda path, *rest: Path(path).name == "last.pt")

from kdpipe.cli import main

sys.argv[0] = "kdpipe"
main()
'''

TIMING = {"elapsed_s", "images_per_s"}  # wall-clock fields: the only ones runs may differ in


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Child environment: one thread, the session's image cache, the fault-point script."""
    base = tmp_path_factory.getbasetemp()
    child = base / "fault_child.py"
    child.write_text(CHILD)
    return {**os.environ, "OMP_NUM_THREADS": "1", "KDPIPE_CACHE": str(base / "kdpipe-cache"),
            "KDPIPE_CHILD": str(child), "COLUMNS": "500"}  # no wrapped lines to match across


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(synthetic_dataset(n_train=64, n_test=20),
                              tmp_path_factory.mktemp("faults") / "images")


def train_args(images: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--model", "plaincnn_student", "--data", str(images), "--epochs", "3",
            "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0.5", "--device", "cpu",
            "--threads", "1", "--no-amp", "--no-progress", "--out", str(out), *more]


def run_child(env: dict[str, str], args: list[str], fault: str = "",
              sig: signal.Signals | None = None, timeout: float = 240) -> tuple[int, str]:
    """Run `kdpipe ARGS`; at the fault point send `sig` (then let it go on): (rc, output)."""
    proc = spawn(env, args, fault)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("FAULT-READY") and sig is not None:
                os.kill(proc.pid, sig)
                if sig != signal.SIGKILL:
                    proc.stdin.write("\n")
                    proc.stdin.flush()
        proc.wait()
    finally:
        watchdog.cancel()
    return proc.returncode, "".join(lines)


def spawn(env: dict[str, str], args: list[str], fault: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, env["KDPIPE_CHILD"], *args],
                            env={**env, "KDPIPE_FAULT": fault}, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen) -> str:
    """Read the child's output up to its FAULT-READY line."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("FAULT-READY"):
            return "".join(seen)
    raise AssertionError("the child ended before its fault point:\n" + "".join(seen))


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def position(out: Path) -> tuple[int, int]:
    _, raw = read_checkpoint(out / "last.pt")
    return raw["trainer"]["epoch"], raw["trainer"]["batch_in_epoch"]


def assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical final weights (every tensor) and the same metrics rows, one per epoch."""
    a = load_checkpoint(reference / "model.pt").state_dict()
    b = load_checkpoint(out / "model.pt").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in rows(run)]
             for run in (reference, out)]
    assert [r["epoch"] for r in strip[1]] == [1, 2, 3]
    assert strip[0] == strip[1]


def said(output: str, word: str, base: Path) -> int:
    """How often `word` appears in what the run printed, its temporary paths left out."""
    return output.replace(str(base), "<tmp>").count(word)


class Reference:
    """The uninterrupted run every faulted run must reproduce exactly. It trains in the
    background (one thread) while the first test's own runs go on; `path()` waits for it."""

    def __init__(self, env: dict[str, str], images: Path, folder: Path) -> None:
        self.out, self.log = folder / "run", folder / "log.txt"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, env["KDPIPE_CHILD"], *train_args(images, self.out)],
                env={**env, "KDPIPE_FAULT": ""}, stdout=log, stderr=subprocess.STDOUT)

    def path(self) -> Path:
        rc = self.proc.wait(timeout=240)
        assert rc == 0, self.log.read_text()
        return self.out


@pytest.fixture(scope="module")
def reference(env, images, tmp_path_factory):
    ref = Reference(env, images, tmp_path_factory.mktemp("reference"))
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_mid_step_and_during_evaluation_resume_bit_for_bit(env, images, reference,
                                                                  tmp_path):
    out = tmp_path / "run"
    # SIGINT while the 6th forward (epoch 2, step 2) has already moved BatchNorm's statistics.
    rc, output = run_child(env, train_args(images, out), "forward:6", signal.SIGINT)
    assert rc == 130, output
    assert said(output, "interrupted", tmp_path) == 1, output
    assert "Traceback" not in output and "continue with --resume" in output
    assert position(out) == (1, 2)  # the step finished, then the run stopped
    assert [r["epoch"] for r in rows(out)] == [1]
    # SIGINT inside the end-of-epoch evaluation: the epoch's row is still written.
    rc, output = run_child(env, train_args(images, out, "--resume"), "evaluate:1", signal.SIGINT)
    assert rc == 130, output
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert position(out) == (2, 0)
    rc, output = run_child(env, train_args(images, out, "--resume"))
    assert rc == 0, output
    assert_same_run(out, reference.path())


def test_a_second_ctrl_c_stops_at_once_and_leaves_last_pt_as_it_was(env, images, tmp_path):
    out = tmp_path / "run"
    proc = spawn(env, train_args(images, out), "forward:6")
    try:
        wait_ready(proc)
        os.kill(proc.pid, signal.SIGINT)
        # Signals do not queue: send the second only once the first has been taken.
        for line in proc.stdout:
            if line.startswith("Ctrl-C: stopping after this step"):
                break
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate("\n", timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "not saved" in output and "Traceback" not in output, output
    assert position(out) == (1, 0)  # epoch 1's save: nothing of the cut-short step


# --------------------------------------------------------------------------- kill -9
def test_kill_9_around_the_row_and_last_pt_keeps_one_row_per_epoch(env, images, reference,
                                                                   tmp_path):
    """A kill right after epoch 1's row is appended, then one right after epoch 3's last.pt is
    written: whichever of the two files comes first, one of these kills falls between them."""
    out = tmp_path / "run"
    rc, output = run_child(env, train_args(images, out), "row:1", signal.SIGKILL)
    assert rc == -signal.SIGKILL, output
    rc, output = run_child(env, train_args(images, out, "--resume"), "last:2", signal.SIGKILL)
    assert rc == -signal.SIGKILL, output
    assert "taking over the stale lock of process" in output  # left behind by the kill
    rc, output = run_child(env, train_args(images, out, "--resume"))
    assert rc == 0, output
    assert_same_run(out, reference.path())


def _unshare_tmpfs() -> list[str]:
    """The command prefix for a private mount namespace, or a skip where the machine forbids it."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs root and `unshare -m` to mount a small tmpfs (a full disk)")
    return ["unshare", "-m", "sh", "-c"]


def test_full_disks_a_last_pt_that_does_not_fit_and_a_cache_dir_without_room(
        env, images, reference, tmp_path):
    """One run on two small tmpfs disks: its --cache-dir has no room for the image cache (a
    warning, once, and training goes on), and its --out has room for one last.pt but not for the
    atomic rewrite beside it, so epoch 2's save fails; the run then resumes from epoch 1."""
    prefix = _unshare_tmpfs()
    disk, cache, kept = tmp_path / "disk", tmp_path / "cache", tmp_path / "run"
    disk.mkdir()
    cache.mkdir()
    size_kib = (reference.path() / "last.pt").stat().st_size * 3 // 2 // 1024
    child = shlex.join([sys.executable, env["KDPIPE_CHILD"],
                        *train_args(images, disk / "run", "--cache-dir", str(cache))])
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {disk} && "
              f"mount -t tmpfs -o size=64k tmpfs {cache} && {child}; rc=$?; "
              f"cp -a {disk / 'run'} {kept}; exit $rc")
    proc = subprocess.run([*prefix, script], env={**env, "KDPIPE_FAULT": ""},
                          capture_output=True, text=True, timeout=240)
    shown = proc.stdout + proc.stderr
    assert shown.count("could not write the image cache") == 1 and str(cache) in shown, shown
    assert "epoch 1/3" in shown  # it went on without the cache
    assert proc.returncode != 0, shown  # then last.pt of epoch 2 did not fit
    # ... said in one line naming the file and the cause (torch's own error names neither)
    assert "Traceback" not in shown and "PytorchStreamWriter" not in shown, shown
    assert f"cannot write {disk / 'run' / 'last.pt'}: No space left on device" in shown, shown
    assert position(kept) == (1, 0)  # the last good save survives the failed one
    assert [r["epoch"] for r in rows(kept)] == [1]
    rc, output = run_child(env, train_args(images, kept, "--resume"))
    assert rc == 0, output
    assert_same_run(kept, reference.path())


# --------------------------------------------------------------------------- one run per folder
def test_a_second_run_on_the_folder_is_refused_and_a_dead_ones_lock_taken_over(
        env, images, tmp_path, capsys):
    out = tmp_path / "run"
    first = spawn(env, train_args(images, out), "forward:1")
    try:
        wait_ready(first)
        second = subprocess.run([sys.executable, "-m", "kdpipe.cli", *train_args(images, out)],
                                env=env, capture_output=True, text=True, timeout=240)
        shown = second.stdout + second.stderr
        assert second.returncode == 2, shown
        assert f"process {first.pid}" in shown and str(out) in shown, shown
        assert "Traceback" not in shown
    finally:
        first.kill()
        first.wait()
    assert (out / runlock.LOCK_NAME).exists()  # left behind by the kill
    with runlock.hold(out):
        assert json.loads((out / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"stale lock of process {first.pid}" in capsys.readouterr().err
    assert not (out / runlock.LOCK_NAME).exists()  # released: the file goes


def test_the_run_lock_is_re_entrant_within_a_process(tmp_path):
    with runlock.hold(tmp_path), runlock.hold(tmp_path):
        pass
    assert not (tmp_path / runlock.LOCK_NAME).exists()


# --------------------------------------------------------------------------- seeding
def test_train_and_distill_of_one_seed_start_from_the_same_weights_and_batches(
        images, tmp_path, monkeypatch):
    seen: dict[str, dict] = {}
    real_step = Trainer._step

    def recording_step(self, images, labels):
        record = seen.setdefault(self.config.out, {"batches": []})
        record.setdefault("initial", {k: v.clone() for k, v in
                                      self.objective.student.state_dict().items()})
        record["batches"].append((images.clone(), labels.clone()))
        return real_step(self, images, labels)

    monkeypatch.setattr(Trainer, "_step", recording_step)
    common = dict(model="plaincnn_student", data=str(images), epochs=1, batch_size=16,
                  device="cpu", threads=1, amp=False, progress=False, seed=3)
    train_baseline(TrainConfig(**common, out=str(tmp_path / "train")))
    torch.manual_seed(12345)  # whatever ran before must not matter
    distill(DistillConfig(**common, method="scratch", out=str(tmp_path / "distill")))
    train_baseline(TrainConfig(**{**common, "seed": 4}, out=str(tmp_path / "other")))
    a, b, other = (seen[str(tmp_path / name)] for name in ("train", "distill", "other"))
    assert a["initial"].keys() == b["initial"].keys()
    assert all(torch.equal(a["initial"][k], b["initial"][k]) for k in a["initial"])
    assert len(a["batches"]) == len(b["batches"]) == 4
    for (xa, ya), (xb, yb) in zip(a["batches"], b["batches"], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(a["initial"][k], other["initial"][k]) for k in a["initial"])


# --------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("command, flags, needle", [
    ("train", ["--epochs", "0"], "--epochs 0 is out of range: it must be at least 1"),
    ("train", ["--lr", "-0.1"], "--lr -0.1 is out of range: it must be 0 or more"),
    ("train", ["--threads", "0"], "--threads 0 is out of range: it must be at least 1"),
    ("train", ["--epochs", "2", "--warmup-epochs", "3"], "from 0 to --epochs (2)"),
    ("train", ["--device", "gpu0"], "it must be auto, cpu, cuda or cuda:N"),
    ("distill", ["--alpha", "1.5"], "--alpha 1.5 is out of range: it must be from 0 to 1"),
    ("distill", ["--alpha", "-0.5"], "--alpha -0.5 is out of range"),
    ("distill", ["--temperature", "0"], "--temperature 0.0 is out of range: it must be above 0"),
])
def test_values_out_of_range_are_refused_up_front(tmp_path, command, flags, needle):
    result = CliRunner().invoke(app, [command, *flags, "--data", str(tmp_path / "absent"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_values_at_the_edges_of_their_ranges_are_accepted():
    TrainConfig(epochs=1, warmup_epochs=1.0, lr=0.0, threads=1, device="cuda:1")
    DistillConfig(alpha=0.0, temperature=0.5)
    DistillConfig(alpha=1.0)


# --------------------------------------------------------------------------- pickles
class _RunsCode:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_says_why(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"kdpipe_checkpoint": 1, "meta": {}, "state_dict": {}, "x": _RunsCode(marker)},
               path)
    with pytest.raises(KdpipeError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert f"refused: it contains code ({os.system.__module__}.system), not just tensors" in message
    assert "weights_only=True" in message and "truncated" not in message
    assert not marker.exists()
