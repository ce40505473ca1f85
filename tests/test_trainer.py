"""The trainer: learning, exact resume, atomic checkpoints, schedules, DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdpipe.errors import KdpipeError
from kdpipe.models import create, load_checkpoint, read_checkpoint
from kdpipe.train import CrossEntropyObjective, TrainConfig, Trainer
from kdpipe.train.precision import native_bf16, uses_bf16
from kdpipe.train.schedule import lr_factor

from .conftest import synthetic_dataset, write_image_folder


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model="resnet20",
        epochs=2,
        batch_size=32,
        lr=0.05,
        warmup_epochs=0.5,
        device="cpu",
        out=str(tmp_path / "run"),
        progress=False,
        threads=2,
        # fp32, the reference numerics: a 24-step toy run is too short to average out bf16's
        # rounding (test_bf16_autocast_follows_the_hardware covers the default path).
        amp=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def run(config: TrainConfig, data, resume: bool = False, objective=None) -> dict:
    torch.manual_seed(config.seed)
    objective = objective or CrossEntropyObjective(create(config.model))
    trainer = Trainer(config, objective, data, resume=resume)
    trainer.setup()
    return trainer.fit()


def test_loss_falls_and_files_are_written(tmp_path, tiny_data):
    config = tiny_config(tmp_path, epochs=3)
    summary = run(config, tiny_data)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary["top1"] > 10.0  # better than chance on the learnable toy set
    for key in ("params", "macs", "wall_time_s", "images_per_s", "environment"):
        assert key in summary
    assert summary["params"] == sum(p.numel() for p in create("resnet20").parameters())
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["epochs"] == 3
    model = load_checkpoint(tmp_path / "run" / "model.pt")
    assert model.kdpipe_meta.classes == list(tiny_data.classes)


class DtypeProbe(CrossEntropyObjective):
    """Records the dtype of the student's logits in every training step."""

    def __init__(self, student):
        super().__init__(student)
        self.dtypes = []

    def forward(self, images, labels):
        out = super().forward(images, labels)
        self.dtypes.append(out.logits.dtype)
        return out


@pytest.mark.parametrize("amp", [True, False])
def test_bf16_autocast_follows_the_hardware(tmp_path, tiny_data, amp):
    objective = DtypeProbe(create("resnet20"))
    summary = run(tiny_config(tmp_path, epochs=1, amp=amp), tiny_data, objective=objective)
    bf16 = amp and native_bf16(torch.device("cpu"))
    assert set(objective.dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    assert summary["precision"] == ("bf16" if bf16 else "fp32")
    assert torch.isfinite(torch.tensor(summary["test_loss"]))
    # The saved student is fp32 whatever it trained in: exporters and evaluation expect that.
    model = load_checkpoint(tmp_path / "run" / "model.pt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_native_bf16_is_off_where_it_would_be_emulated(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert not native_bf16(torch.device("cpu"))
    assert not uses_bf16(True, torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert uses_bf16(True, torch.device("cpu")) and not uses_bf16(False, torch.device("cpu"))


class InterruptAfter(CrossEntropyObjective):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the n-th training step."""

    def __init__(self, student, n: int):
        super().__init__(student)
        self.calls, self.n = 0, n

    def forward(self, images, labels):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().forward(images, labels)


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_data):
    straight = tiny_config(tmp_path / "a")
    run(straight, tiny_data)
    interrupted = tiny_config(tmp_path / "b")
    torch.manual_seed(interrupted.seed)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, tiny_data, objective=InterruptAfter(create("resnet20"), n=11))  # epoch 2
    _, raw = read_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert (raw["trainer"]["epoch"], raw["trainer"]["batch_in_epoch"]) == (1, 2)
    run(interrupted, tiny_data, resume=True)
    a = load_checkpoint(tmp_path / "a" / "run" / "model.pt").state_dict()
    b = load_checkpoint(tmp_path / "b" / "run" / "model.pt").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_existing_run_needs_resume_and_same_settings(tmp_path, tiny_data):
    config = tiny_config(tmp_path, epochs=1)
    run(config, tiny_data)
    with pytest.raises(KdpipeError, match="--resume"):
        run(config, tiny_data)
    with pytest.raises(KdpipeError, match="lr"):
        run(tiny_config(tmp_path, epochs=1, lr=0.2), tiny_data, resume=True)


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, tiny_data, monkeypatch):
    config = tiny_config(tmp_path, epochs=2)
    run(config, tiny_data)
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # simulate a crash half-way through the write
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    trainer = Trainer(config, CrossEntropyObjective(create("resnet20")), tiny_data, resume=True)
    trainer.setup()
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("schedule", ["cosine", "multistep"])
def test_schedule_warms_up_then_decays(schedule):
    factors = [lr_factor(s, 100, 10, schedule) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] < 0.05
    assert all(b <= a + 1e-12 for a, b in zip(factors[10:], factors[11:], strict=False))


def test_ddp_two_cpu_processes(tmp_path):
    root = write_image_folder(synthetic_dataset(n_train=160, n_test=40), tmp_path / "images")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDPIPE_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "kdpipe.cli",
        "train",
        "--model",
        "resnet20",
        "--data",
        str(root),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # only rank 0 writes
    # 160 images, 2 ranks x batch 16 -> 5 steps per rank
    _, raw = read_checkpoint(out / "last.pt")
    assert raw["trainer"]["scheduler"]["last_epoch"] == 5
