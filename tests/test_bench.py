"""`kdpipe bench`: the latency protocol on a fake clock, the report schema, and end-to-end benches
of a tiny model in PyTorch eager and ONNX Runtime (plus skipped runtimes and bad input)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdpipe.bench import remote_runner
from kdpipe.bench.bench import run_bench
from kdpipe.bench.config import BenchConfig
from kdpipe.cli import app
from kdpipe.config import comma_list, from_dict
from kdpipe.errors import KdpipeError
from kdpipe.export.metadata import read_metadata, sidecar_path
from kdpipe.report.plot import Point, pareto_front
from kdpipe.report.schema import SCHEMA_VERSION, load_bench_report
from kdpipe.runtime import latency

from .conftest import fresh_python, synthetic_dataset

runner = CliRunner()
MODEL = "plaincnn_student"  # the smallest registered model (0.07M parameters)
ROW_FIELDS = ["name", "runtime", "format", "quantization", "top1", "params", "macs", "size_bytes",
              "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb",
              "status", "reason", "spread", "noisy"]  # spread and noisy: schema v2


# ---------------------------------------------------------------- tiny artifacts and data


def make_artifacts(folder: Path) -> dict[str, Path]:
    """A checkpoint of a tiny model and its ONNX (dynamic batch) and TorchScript exports, made
    by `kdpipe.export` (without its parity check: bench and deploy tests need only the files)."""
    from kdpipe.export import export_checkpoint
    from kdpipe.models import CheckpointMeta, create, save_checkpoint
    from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    meta = CheckpointMeta(model=MODEL, model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(ZOO_MEAN), std=list(ZOO_STD),
                          input_shape=[3, 32, 32])
    checkpoint = folder / "student.pt"
    save_checkpoint(checkpoint, create(MODEL).eval(), meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters' deprecation notices
        export_checkpoint(checkpoint, "onnx,torchscript", "none", folder, parity=False,
                          name="tiny")
    return {"checkpoint": checkpoint, "onnx": folder / "tiny.onnx",
            "torchscript": folder / "tiny.pt"}


def sidecar(path: Path, like: Path, **changes) -> None:
    """Metadata for `path`: that of the exported `like`, with `changes` (another format, fixed
    batch sizes, other classes...)."""
    meta = dataclasses.replace(read_metadata(like), file=path.name, **changes)
    sidecar_path(path).write_text(meta.to_json())


def image_folder(root: Path, n_test: int = 20) -> Path:
    """An ImageFolder tree of the synthetic data set (PNG, lossless)."""
    from PIL import Image

    data = synthetic_dataset(n_train=10, n_test=n_test)
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / data.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    paths = make_artifacts(base / "artifacts")
    paths["data"] = image_folder(base / "images")
    return paths


def fast_config(tiny, out: Path, **changes) -> BenchConfig:
    values = dict(data=str(tiny["data"]), batch_sizes=[1, 4], warmup=2, iters=5, min_time_s=0,
                  threads=1, memory=False, progress=False, out=str(out))
    return BenchConfig(**{**values, **changes})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- the latency protocol


class FakeClock:
    """A clock whose call i returns ticks[i]; records nothing else."""

    def __init__(self, ticks: list[int]) -> None:
        self.ticks = iter(ticks)

    def __call__(self) -> int:
        return next(self.ticks)


def test_time_calls_warms_up_then_times_each_call_on_the_clock():
    calls, syncs = [], []
    clock = FakeClock([0, 1_000_000, 5_000_000, 7_000_000, 10_000_000, 13_000_000])
    x = np.zeros((1, 3, 2, 2), np.float32)
    durations = latency.time_calls(calls.append, x, warmup=4, iters=3, clock=clock,
                                   sync=lambda: syncs.append(1))
    assert durations == [1_000_000, 2_000_000, 3_000_000]
    assert len(calls) == 7 and all(c is x for c in calls)  # one input, reused
    assert len(syncs) == 1 + 3  # after warm-up, and before every stop reading


def test_time_budget_stops_early_but_never_below_the_minimum():
    ticks = [t for i in range(100) for t in (i * 10**9, i * 10**9 + 10**9)]  # 1 s per call
    durations = latency.time_calls(lambda x: None, np.zeros(1), warmup=0, iters=100,
                                   budget_s=2.5, clock=FakeClock(ticks))
    assert len(durations) == latency.MIN_TIMED_CALLS
    durations = latency.time_calls(lambda x: None, np.zeros(1), warmup=0, iters=100,
                                   budget_s=7.5, clock=FakeClock(ticks))
    assert len(durations) == 8


def test_min_time_extends_timing_past_iters_until_the_calls_add_up():
    ticks = [t for i in range(100) for t in (i * 10**9, i * 10**9 + 10**8)]  # 0.1 s per call
    durations = latency.time_calls(lambda x: None, np.zeros(1), warmup=0, iters=3,
                                   min_time_s=0.75, clock=FakeClock(ticks))
    assert len(durations) == 8  # 3 calls are 0.3 s; 8 are the first to reach 0.75 s
    durations = latency.time_calls(lambda x: None, np.zeros(1), warmup=0, iters=10,
                                   min_time_s=0.25, clock=FakeClock(ticks))
    assert len(durations) == 10  # iters is still the floor
    durations = latency.time_calls(lambda x: None, np.zeros(1), warmup=0, iters=3,
                                   min_time_s=5.0, budget_s=0.6, clock=FakeClock(ticks))
    assert len(durations) == 6  # the budget caps what min_time asks for


def test_the_device_runner_times_as_long_as_kdpipe_does():
    slow = lambda x: time.sleep(0.002)  # noqa: E731
    ours = latency.time_calls(slow, np.zeros(1), warmup=0, iters=2, min_time_s=0.02)
    theirs = remote_runner.time_calls(slow, np.zeros(1), 0, 2, None, 0.02)
    for durations in (ours, theirs):
        assert sum(durations) >= 0.02e9 and len(durations) > 2
        assert sum(durations[:-1]) < 0.02e9  # stops at the first call that reaches it


def test_summarize_uses_linear_percentiles_and_batch_times_calls_over_total_time():
    durations_ns = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    stats = latency.summarize(durations_ns, batch_size=8)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput_ips == pytest.approx(8 * 100 / 5.050)  # total 5050 ms
    assert stats.calls == 100


def test_the_device_runner_follows_the_same_protocol():
    durations = [3_100_000, 2_000_000, 9_900_000, 2_500_000, 2_200_000, 4_000_000]
    ours = dataclasses.asdict(latency.summarize(durations, 4))
    theirs = remote_runner.summarize(durations, 4)
    assert theirs == pytest.approx(ours)
    assert np.array_equal(latency.random_input(2, (3, 4, 4)),
                          remote_runner.random_input(2, (3, 4, 4)))


def test_pareto_front_keeps_only_undominated_points():
    points = [Point("slow-good", 10, 90), Point("fast-bad", 1, 70), Point("dominated", 12, 80),
              Point("mid", 5, 85), Point("same-latency-worse", 5, 60)]
    assert [p.label for p in pareto_front(points)] == ["fast-bad", "mid", "slow-good"]


def test_batch_sizes_parse_from_a_flag_or_a_list():
    assert comma_list("1,32", int, "--batch-sizes") == [1, 32]
    assert comma_list([32, 1], int, "--batch-sizes") == [32, 1]
    for bad in ("1,x", ""):
        with pytest.raises(KdpipeError, match="--batch-sizes"):
            comma_list(bad, int, "--batch-sizes")
    with pytest.raises(KdpipeError, match="batch sizes"):
        BenchConfig(batch_sizes=[0])
    with pytest.raises(KdpipeError, match="expected a list"):  # a file holds a list, not text
        from_dict(BenchConfig, {"batch_sizes": "1,32"})


# ---------------------------------------------------------------- end to end


def test_eager_and_onnxruntime_bench_writes_the_documented_report(tiny, tmp_path):
    out = tmp_path / "bench"
    result = invoke("bench", tiny["checkpoint"], tiny["onnx"], "--data", tiny["data"],
                    "--batch-sizes", "1,4", "--warmup", 2, "--iters", 5, "--min-time-s", 0,
                    "--threads", 1, "--no-memory", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"bench.md", "bench.json", "bench.csv", "bench.png"}
    raw = json.loads((out / "bench.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["kind"] == "kdpipe.bench"
    assert list(raw["rows"][0]) == ROW_FIELDS
    report = load_bench_report(out / "bench.json")
    ok = {(r.runtime, r.batch_size): r for r in report.rows if r.status == "ok"}
    assert set(ok) == {("eager", 1), ("eager", 4), ("onnxruntime", 1), ("onnxruntime", 4)}
    for row in ok.values():
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.throughput_ips > 0 and row.size_bytes > 0 and row.params > 0
    # the same weights behind both runtimes: normalization inside the eager session matches ONNX
    assert ok["eager", 1].top1 == ok["onnxruntime", 1].top1
    assert report.data["n_test"] == 20
    assert report.machine["threads"] == 1 and report.machine["cpu"]
    assert report.runtimes["onnxruntime"] and torch.__version__.startswith(report.runtimes["eager"])
    markdown = (out / "bench.md").read_text()
    onnx_label = f"{Path(tiny['onnx']).parent.name}/tiny.onnx"  # folder/file names each row
    assert f"| {onnx_label} | onnxruntime |" in markdown and "numpy.percentile" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtimes_that_cannot_run_here_are_skipped_with_the_reason(tiny, tmp_path):
    package = tmp_path / "student.mlpackage"  # prediction needs macOS before anything is read
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    sidecar(package, tiny["onnx"], format="coreml", runtime="coreml")
    report, _ = run_bench([tiny["onnx"], package],
                          fast_config(tiny, tmp_path / "out", accuracy=False))
    rows = {(r.runtime, r.batch_size): r for r in report.rows}
    if sys.platform != "darwin":
        coreml = rows["coreml", 1]
        assert coreml.status == "skipped" and "macOS" in coreml.reason
        assert coreml.size_bytes == 2  # a package's size is its folder's total
    if not torch.cuda.is_available():
        trt = rows["tensorrt", 1]
        assert trt.status == "skipped"
        assert trt.reason.startswith("TensorRT needs an NVIDIA GPU with CUDA and "
                                     "`pip install 'kdpipe[tensorrt]'`")
    assert rows["onnxruntime", 4].status == "ok" and rows["onnxruntime", 4].top1 is None


def test_fixed_batch_artifact_skips_other_sizes_and_still_scores_every_image(tiny, tmp_path):
    fixed = tmp_path / "fixed.onnx"
    fixed.write_bytes(tiny["onnx"].read_bytes())
    sidecar(fixed, tiny["onnx"], batch_sizes=[8], dynamic_batch=False)
    report, _ = run_bench([fixed], fast_config(tiny, tmp_path / "out", batch_sizes=[1, 8],
                                               runtimes=["onnxruntime"]))
    one, eight = report.rows
    assert one.status == "skipped" and "[8]" in one.reason
    assert eight.status == "ok"
    dynamic, _ = run_bench([tiny["onnx"]], fast_config(tiny, tmp_path / "dyn", batch_sizes=[1],
                                                      runtimes=["onnxruntime"]))
    assert eight.top1 == dynamic.rows[0].top1  # 20 images in chunks of 8: padding dropped


def test_peak_rss_comes_from_a_fresh_subprocess(tiny, tmp_path):
    report, _ = run_bench([tiny["onnx"]], fast_config(tiny, tmp_path / "out", memory=True,
                                                      accuracy=False, batch_sizes=[2],
                                                      runtimes=["onnxruntime"]))
    (row,) = report.rows
    assert row.status == "ok" and row.reason == ""
    # more than an interpreter with numpy, far less than one that imported PyTorch as well
    assert 20 < row.peak_rss_mb < 400


def test_torchscript_runs_in_its_own_runtime(tiny, tmp_path):
    report, _ = run_bench([tiny["torchscript"]], fast_config(tiny, tmp_path / "out",
                                                             batch_sizes=[2]))
    (row,) = report.rows
    assert (row.runtime, row.format, row.status) == ("torchscript", "torchscript", "ok")


def test_bad_input_is_one_message_and_no_report(tiny, tmp_path):
    out = tmp_path / "bench"
    unknown = tmp_path / "model.tflite"
    unknown.write_bytes(b"x")
    for path, needle in ((tmp_path / "missing.onnx", "missing.onnx"), (unknown, ".tflite")):
        result = invoke("bench", tiny["onnx"], path, "--no-accuracy", "--out", out)
        assert result.exit_code != 0
        assert "Traceback" not in result.output and needle in result.output, result.output
        assert not out.exists()


def test_a_model_for_other_classes_is_refused_before_anything_runs(tiny, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny["onnx"].read_bytes())
    sidecar(other, tiny["onnx"], classes=[f"c{i}" for i in range(10)])
    with pytest.raises(KdpipeError, match="classes"):
        run_bench([other], fast_config(tiny, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bench_reads_a_config_file(tiny, tmp_path):
    config = tmp_path / "bench.toml"
    config.write_text(f'batch_sizes = [2]\niters = 3\nmin_time_s = 0\nwarmup = 1\nmemory = false\n'
                      f'accuracy = false\nruntimes = ["onnxruntime"]\nout = "{tmp_path / "o"}"\n')
    result = invoke("bench", tiny["onnx"], "--config", config)
    assert result.exit_code == 0, result.output
    assert [r.batch_size for r in load_bench_report(tmp_path / "o" / "bench.json").rows] == [2]
    assert invoke("bench", tiny["onnx"], "--config", config, "--iters", 0).exit_code != 0


def test_optional_runtimes_are_not_imported_with_kdpipe_deploy():
    code = ("import sys, kdpipe.deploy, kdpipe.bench.bench, kdpipe.runtime; "
            "print([m for m in ('executorch', 'coremltools', 'tensorrt', 'torch_tensorrt') "
            "if m in sys.modules])")
    done = fresh_python(code)
    assert done.stdout.strip() == "[]"


def test_list_shows_every_registry_with_availability():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for needle in ("models", "resnet20", "methods", "export targets", "runtimes", "onnxruntime",
                   "tensorrt", "executorch", "training devices"):
        assert needle in result.output
    from kdpipe.catalog import training_devices
    from kdpipe.train.precision import native_bf16

    cpu = training_devices()[0]
    assert cpu["name"] == "cpu" and cpu["bf16"] == native_bf16(torch.device("cpu"))
    assert cpu["default precision"] == ("bf16 autocast" if cpu["bf16"] else "fp32")


def test_a_glob_with_sidecars_benches_the_artifacts_and_prints_a_table(tiny, tmp_path):
    out = tmp_path / "bench"
    onnx = tiny["onnx"]
    # `kdpipe bench export/*`: the shell passes each artifact and its .json sidecar
    result = invoke("bench", onnx, sidecar_path(onnx), "--runtimes", "onnxruntime",
                    "--batch-sizes", 1, "--warmup", 1, "--iters", 3, "--min-time-s", 0,
                    "--no-accuracy", "--no-memory", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    assert {r.name for r in load_bench_report(out / "bench.json").rows} == {
        f"{onnx.parent.name}/{onnx.name}"}
    table = result.output[:result.output.index("report:")]
    assert "artifact" in table and "p50 ms" in table and "img/s" in table
    assert f"{onnx.parent.name}/{onnx.name}  onnxruntime" in table
    assert "## Recommendation" in (out / "bench.md").read_text()


def test_a_sidecar_alone_is_still_refused(tiny, tmp_path):
    from kdpipe.bench.bench import without_sidecars

    onnx = tiny["onnx"]
    assert without_sidecars([onnx, sidecar_path(onnx)]) == [onnx]
    assert without_sidecars([sidecar_path(onnx)]) == [sidecar_path(onnx)]


def test_a_passive_openmp_wait_policy_is_named_in_the_report_notes():
    from kdpipe.runtime.latency import environment_notes

    assert environment_notes({}) == [] and environment_notes({"OMP_WAIT_POLICY": "ACTIVE"}) == []
    (note,) = environment_notes({"OMP_WAIT_POLICY": " passive"})
    assert "OMP_WAIT_POLICY=PASSIVE" in note and "unset it" in note
