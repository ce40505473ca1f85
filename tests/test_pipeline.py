"""`kdpipe pipeline`: the whole path on a tiny budget, resume after an interruption in each stage,
and a user-defined model brought in through the Python API."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import kdpipe.bench.bench
import kdpipe.export
import kdpipe.train
from kdpipe.cli import app
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD
from kdpipe.models import MODELS, CheckpointMeta, create, load_checkpoint, save_checkpoint
from kdpipe.pipeline import builtin_configs, load_pipeline_config, run_pipeline

from .conftest import synthetic_dataset, write_image_folder

distill_module = importlib.import_module("kdpipe.train.distill")


def random_teacher(path, classes):
    meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=len(classes),
                          classes=list(classes), mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD),
                          input_shape=[3, 32, 32])
    torch.manual_seed(0)
    save_checkpoint(path, create("resnet20"), meta)
    return path


@pytest.fixture
def tiny_pipeline(tmp_path):
    data = synthetic_dataset(n_train=80, n_test=40)
    root = write_image_folder(data, tmp_path / "images")
    teacher = random_teacher(tmp_path / "teacher.pt", data.classes)
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
out = "{tmp_path / 'report'}"
data = "{root}"
teacher_checkpoint = "{teacher}"
student = "resnet20"
methods = ["kd"]
progress = false
export_teacher = false

[train]
epochs = 1
batch_size = 20
device = "cpu"
threads = 2

[[export]]
target = "onnx"
quantize = "none"

[export_options]
parity_size = 20
batch_sizes = [1, 4]

[bench]
batch_sizes = [1]
warmup = 1
iters = 3
min_time_s = 0
memory = false
""")
    return config


class Interrupt:
    """Wraps a stage function: raises KeyboardInterrupt on the first call if armed; counts calls."""

    def __init__(self, fn):
        self.fn, self.armed, self.calls = fn, False, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs.get("resume"))
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def test_pipeline_end_to_end_and_resume_after_each_stage(tiny_pipeline, monkeypatch):
    stages = {
        "scratch": Interrupt(kdpipe.train.train_baseline),
        "distill": Interrupt(distill_module.distill),
        "export": Interrupt(kdpipe.export.run_export),
        "bench": Interrupt(kdpipe.bench.bench.run_bench),
    }
    monkeypatch.setattr(kdpipe.train, "train_baseline", stages["scratch"])
    monkeypatch.setattr(distill_module, "distill", stages["distill"])
    monkeypatch.setattr(kdpipe.export, "run_export", stages["export"])
    monkeypatch.setattr(kdpipe.bench.bench, "run_bench", stages["bench"])
    config = load_pipeline_config(str(tiny_pipeline), {})
    for name in stages:  # each run is interrupted in the next stage
        stages[name].armed = True
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config)
    index = run_pipeline(config)
    # scratch: interrupted, then resumed once; never rerun after it completed
    assert stages["scratch"].calls == [False, True]
    assert stages["distill"].calls == [False, True]
    # export: once per model (scratch, kd) plus the interrupted call; bench: once plus that call
    assert len(stages["export"].calls) == 3 and len(stages["bench"].calls) == 2
    text = index.read_text()
    for needle in ("teacher", "scratch", "kd/kd.onnx", "onnxruntime", "bench.png"):
        assert needle in text, needle
    report = json.loads((index.parent / "pipeline.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "scratch", "kd"]
    # a second run with the same config does no work at all
    run_pipeline(config)
    assert stages["scratch"].calls == [False, True]
    assert len(stages["bench"].calls) == 2


def test_changed_config_redoes_only_the_stages_it_touches(tiny_pipeline, monkeypatch):
    config = load_pipeline_config(str(tiny_pipeline), {})
    run_pipeline(config)
    calls = Interrupt(kdpipe.train.train_baseline)
    distills = Interrupt(distill_module.distill)
    monkeypatch.setattr(kdpipe.train, "train_baseline", calls)
    monkeypatch.setattr(distill_module, "distill", distills)
    config.distill = {"temperature": 8.0}
    run_pipeline(config)
    assert calls.calls == [] and distills.calls == [False]


def test_one_failed_artifact_does_not_sink_the_pipeline(tiny_pipeline, monkeypatch):
    """TorchScript fails its parity check for the kd student only: the other artifacts are still
    exported, benched and reported, the failure is listed with its reason, the run fails, and a
    re-run retries only that job."""
    from kdpipe.pipeline import PipelineIncomplete
    from kdpipe.runtime.torchscript import TorchScript

    text = tiny_pipeline.read_text().replace(
        '[export_options]', '[[export]]\ntarget = "torchscript"\nquantize = "none"\n\n'
                            '[export_options]')
    tiny_pipeline.write_text(text)
    real_load = TorchScript.load

    class Garbage:
        def run(self, x):
            return np.random.default_rng(0).normal(size=(len(x), 10)).astype(np.float32)

    def garbage_for_kd(self, artifact, threads):
        # the export's parity check of the kd student only (bench opens it from its folder)
        if artifact.path.name == "kd.pt" and artifact.path.parent.name.startswith(".export"):
            return Garbage()
        return real_load(self, artifact, threads)

    monkeypatch.setattr(TorchScript, "load", garbage_for_kd)
    exports = Interrupt(kdpipe.export.run_export)
    monkeypatch.setattr(kdpipe.export, "run_export", exports)
    config = load_pipeline_config(str(tiny_pipeline), {})
    with pytest.raises(PipelineIncomplete) as failed:
        run_pipeline(config)
    assert [(f.model, f.target) for f in failed.value.failed] == [("kd", "torchscript")]
    assert len(exports.calls) == 4  # 2 models x 2 targets
    index = failed.value.index
    report = json.loads((index.parent / "pipeline.json").read_text())
    assert report["failed_exports"][0]["reason"].startswith("kd.pt: parity failed")
    benched = {row["name"] for row in report["bench"]["rows"]}
    assert {"kd/kd.onnx", "scratch/scratch.onnx", "scratch/scratch.pt"} <= benched
    assert "kd/kd.pt" not in benched
    assert "Failed exports" in index.read_text() and "kd.pt: parity failed" in index.read_text()
    # Through the CLI: one error line naming the report, a non-zero exit, no traceback; and only
    # the failed job is retried.
    result = CliRunner().invoke(app, ["pipeline", str(tiny_pipeline)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Run the same command again" in " ".join(result.output.split())
    assert len(exports.calls) == 5
    monkeypatch.setattr(TorchScript, "load", real_load)  # the cause is fixed: the retry passes
    index = run_pipeline(config)
    assert len(exports.calls) == 6
    report = json.loads((index.parent / "pipeline.json").read_text())
    assert report["failed_exports"] == []
    assert "kd/kd.pt" in {row["name"] for row in report["bench"]["rows"]}


def test_a_failed_training_run_does_not_stop_the_others_and_a_rerun_redoes_only_it(
        tiny_pipeline, monkeypatch):
    """The train stage is a list of executor items (as a sweep's cells): kd raising leaves the
    scratch run finished, names kd and its error.txt, and the next run resumes only kd."""
    from kdpipe.errors import KdpipeError

    class FailOnce(Interrupt):
        def __call__(self, *args, **kwargs):
            if not self.calls:
                self.calls.append(kwargs.get("resume"))
                raise RuntimeError("boom")
            return super().__call__(*args, **kwargs)

    scratch = Interrupt(kdpipe.train.train_baseline)
    kd = FailOnce(distill_module.distill)
    monkeypatch.setattr(kdpipe.train, "train_baseline", scratch)
    monkeypatch.setattr(distill_module, "distill", kd)
    config = load_pipeline_config(str(tiny_pipeline), {})
    with pytest.raises(KdpipeError, match=r"1 of 2 training runs failed \(kd: RuntimeError: boom"):
        run_pipeline(config)
    out = tiny_pipeline.parent / "report"
    assert (out / "scratch" / "summary.json").exists()
    assert json.loads((out / "scratch" / "summary.json").read_text())["executor"] == "local"
    assert "boom" in (out / "kd" / "error.txt").read_text()
    export = Interrupt(kdpipe.export.run_export)
    export.armed = True  # stop once training is done: this test is about the train stage
    monkeypatch.setattr(kdpipe.export, "run_export", export)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    assert scratch.calls == [False] and kd.calls == [False, True]
    assert not (out / "kd" / "error.txt").exists()


def test_runs_reading_a_teacher_cache_wait_for_the_first_that_fills_it(tmp_path):
    """Under Ray the runs go in parallel: the first teacher-reading run fills the cache and the
    others sharing it are ordered after it; the scratch baseline waits for nothing."""
    from dataclasses import replace

    from kdpipe.executors import Work, ordered_by_cache, teacher_cache_key
    from kdpipe.pipeline import PipelineConfig, plan_training

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights")
    config = PipelineConfig(out=str(tmp_path / "out"), methods=["kd", "rkd", "fitnets"],
                            distill={"teacher_cache": str(tmp_path / "cache")})
    runs = plan_training(config, "data", teacher)
    work = ordered_by_cache([Work(r.name, r.folder, r) for r in runs],
                            lambda run: teacher_cache_key(run.config))
    assert {w.name: w.after for w in work} == {"scratch": None, "kd": None, "rkd": "kd",
                                               "fitnets": "kd"}
    uncached = plan_training(replace(config, distill={}), "data", teacher)
    assert all(teacher_cache_key(r.config) is None for r in uncached)


def test_builtin_quickstart_config_names_its_inputs(tmp_path, monkeypatch):
    assert {"quickstart", "full"} <= set(builtin_configs())
    config = load_pipeline_config(None, {"out": str(tmp_path / "q")})
    assert config.methods == ["kd"] and config.student == "resnet20"
    monkeypatch.chdir(tmp_path)  # no ../shared here and no data given
    monkeypatch.setattr("kdpipe.data.default_data_path", lambda: None)
    result = CliRunner().invoke(app, ["pipeline", "--out", str(tmp_path / "q")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--download" in result.output


class TinyNet(nn.Module):
    """A user's own network: any nn.Module; `feature_layers` names the layers for hints."""

    feature_layers = {"stage1": "block1", "stage2": "block2", "embedding": "flatten"}

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.block2(self.block1(x)))))


@MODELS.register("test_tinynet")
def tinynet(num_classes: int = 10) -> nn.Module:
    return TinyNet(num_classes)


@pytest.mark.parametrize("method", ["fitnets", "kd+rkd"])
def test_user_defined_student_through_the_python_api(tmp_path, method):
    from kdpipe.train.distill import DistillConfig, distill

    data = synthetic_dataset(n_train=64, n_test=20)
    root = write_image_folder(data, tmp_path / "images")
    teacher = random_teacher(tmp_path / "teacher.pt", data.classes)
    config = DistillConfig(student="test_tinynet", teacher_checkpoint=str(teacher),
                           method=method, hint_layer="final", hint_epochs=1, data=str(root),
                           epochs=1, batch_size=16, device="cpu", progress=False,
                           out=str(tmp_path / "run"))
    summary = distill(config)
    assert summary["model"] == "test_tinynet" and summary["method"] == method
    model = load_checkpoint(tmp_path / "run" / "model.pt")
    assert isinstance(model, TinyNet)
    if method == "fitnets":
        assert (tmp_path / "run" / "stage1" / "model.pt").exists()


@pytest.mark.parametrize("table, line, word", [
    ("train", "epochz = 3", "epochz"),
    ("distill", "temprature = 8.0", "temprature"),
    ("train", 'epochs = "three"', "epochs"),
    ("distill", 'method = "rkd"', "method"),  # set by the pipeline's `methods`, not here
])
def test_a_typo_in_train_or_distill_is_refused_when_the_file_loads(tmp_path, monkeypatch, table,
                                                                   line, word):
    from kdpipe.errors import KdpipeError

    def no_training(*args, **kwargs):
        raise AssertionError("trained despite a bad config")

    monkeypatch.setattr(kdpipe.train, "train_baseline", no_training)
    monkeypatch.setattr(distill_module, "distill", no_training)
    path = tmp_path / "pipe.toml"
    path.write_text(f'out = "{tmp_path / "out"}"\n[{table}]\n{line}\n')
    with pytest.raises(KdpipeError, match=word):
        load_pipeline_config(str(path), {})
    result = CliRunner().invoke(app, ["pipeline", str(path)])
    assert result.exit_code == 2 and word in result.output
    assert not (tmp_path / "out").exists()


def test_pipeline_stage_hash_ignores_settings_that_do_not_change_results(tmp_path):
    """The pipeline agrees with the sweep and the trainer's resume (`option(result=False)`)."""
    from kdpipe.config import results_only
    from kdpipe.train.config import TrainConfig

    fast = TrainConfig(threads=1, device="cpu", progress=False, num_workers=0, out="a")
    slow = TrainConfig(threads=8, device="auto", progress=True, num_workers=4, out="b")
    assert results_only(fast) == results_only(slow)
    assert results_only(fast) != results_only(TrainConfig(data="elsewhere"))


@pytest.mark.parametrize("old, new, needle", [
    ("[bench]\n", "[bench]\niterz = 3\n", "iterz"),
    ("[export_options]\n", "[export_options]\nparity_sise = 20\n", "parity_sise"),
    ("batch_sizes = [1]\n", 'batch_sizes = "1"\n', "expected a list"),
])
def test_a_bad_key_in_the_bench_or_export_tables_is_refused_when_the_file_loads(
        tiny_pipeline, old, new, needle):
    """A typo in [bench] used to surface after training and export had run."""
    tiny_pipeline.write_text(tiny_pipeline.read_text().replace(old, new))
    result = CliRunner().invoke(app, ["pipeline", str(tiny_pipeline)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert needle in result.output
    assert not (tiny_pipeline.parent / "report").exists()  # refused before any stage ran
