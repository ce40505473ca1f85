"""The report room without any model: recommendation, noisy timing and the schema's versions."""

from __future__ import annotations

import dataclasses
import json

from kdpipe.report.bench_report import NOISY_NOTE, markdown, write_bench_report
from kdpipe.report.recommend import (
    Constraints,
    latency_disagreements,
    recommend,
    tolerant_front,
)
from kdpipe.report.recommend import markdown as recommendation_markdown
from kdpipe.report.schema import SCHEMA_VERSION, BenchReport, BenchRow, load_bench_report

MIB = 1 << 20


def row(name: str, top1: float | None, p50: float | None, *, runtime: str = "onnxruntime",
        size_mib: float = 1.0, batch: int = 1, p90: float | None = None, status: str = "ok",
        quantization: str = "fp32", params: int = 270_000, reason: str = "") -> BenchRow:
    return BenchRow(name=name, runtime=runtime, format="onnx", quantization=quantization,
                    top1=top1, params=params, macs=40_000_000, size_bytes=int(size_mib * MIB),
                    batch_size=batch, p50_ms=p50, p90_ms=p90 if p90 is not None else p50,
                    p99_ms=p50, throughput_ips=1.0, status=status, reason=reason)


def report_of(rows: list[BenchRow]) -> BenchReport:
    return BenchReport(device="local", machine={"cpu": "test", "threads": 1}, runtimes={},
                       protocol={}, rows=rows, created_utc="2025-01-01T00:00:00+00:00")


# ---------------------------------------------------------------- the recommendation


def test_accuracy_wins_within_the_latency_noise():
    # The case the issue names: scratch is 0.02 ms faster and 10 points worse; noise, not speed.
    scratch, kd = row("scratch.onnx", 60.0, 0.50), row("kd.onnx", 70.65, 0.52)
    rec = recommend([scratch, kd])
    assert rec.front == {"onnxruntime": [kd]}
    assert rec.best is kd
    assert [(r.name, why) for r, why in rec.others] == [
        ("scratch.onnx", "meets the limits, lower top-1 (60.00% vs 70.65%)")]


def test_a_clearly_faster_model_stays_on_the_front():
    small, big = row("small.onnx", 60.0, 0.2), row("big.onnx", 90.0, 2.0)
    assert tolerant_front([big, small]) == [small, big]


def test_the_front_is_per_runtime_and_skips_unusable_rows():
    rows = [row("a.onnx", 70.0, 1.0), row("a.onnx", 70.0, 5.0, runtime="eager"),
            row("a.onnx", 70.0, 0.1, batch=32),  # not batch 1
            row("b.onnx", None, 0.1),  # accuracy not measured
            row("c.onnx", 80.0, None, status="skipped"),
            row("d.onnx", 99.0, 0.01, reason="emulated (qemu): latency not representative")]
    rec = recommend(rows)
    assert rec.batch_size == 1
    assert {k: [r.name for r in v] for k, v in rec.front.items()} == {
        "onnxruntime": ["a.onnx"], "eager": ["a.onnx"]}
    assert rec.best is rows[0]  # same top-1: the faster runtime


def test_constraints_pick_the_most_accurate_that_meets_them_and_say_why_not_the_rest():
    teacher = row("teacher.onnx", 93.0, 3.0, size_mib=3.3)
    kd = row("kd.onnx", 90.0, 0.5, size_mib=1.05)
    kd8 = row("kd-int8.onnx", 90.0, 0.3, size_mib=0.3, quantization="int8")
    scratch8 = row("scratch-int8.onnx", 85.0, 0.3, size_mib=0.3, quantization="int8")
    tiny = row("tiny.onnx", 60.0, 0.1, size_mib=0.1)
    rec = recommend([teacher, kd, kd8, scratch8, tiny],
                    Constraints(min_top1=80, max_latency_ms=1.0, max_size_mb=1.0))
    assert rec.best is kd8  # ties kd on top-1, faster and smaller
    why = {r.name: w for r, w in rec.others}
    assert why == {
        "teacher.onnx": "p50 3.000 ms > 1 ms; size 3.30 MiB > 1 MiB",
        "kd.onnx": "size 1.05 MiB > 1 MiB",
        "scratch-int8.onnx": "meets the limits, lower top-1 (85.00% vs 90.00%)",
        "tiny.onnx": "top-1 60.00% < 80%",
    }
    text = "\n".join(recommendation_markdown(rec))
    assert "**Ship `kd-int8.onnx` in onnxruntime (int8)" in text
    assert "top-1 >= 80%, p50 <= 1.0 ms, size <= 1.0 MiB" in text


def test_ties_on_top1_and_latency_go_to_the_smaller_file():
    big, small = row("big.onnx", 90.0, 0.5, size_mib=2), row("small.onnx", 90.0, 0.5, size_mib=1)
    rec = recommend([big, small])
    assert rec.best is small
    assert rec.others == [(big, "same top-1 and latency, larger file")]


def test_nothing_meets_the_limits_says_so():
    rec = recommend([row("a.onnx", 70.0, 1.0)], Constraints(max_latency_ms=0.5))
    assert rec.best is None and rec.others[0][1] == "p50 1.000 ms > 0.5 ms"
    assert "**Nothing meets the limits**" in "\n".join(recommendation_markdown(rec))
    assert "Nothing to recommend" in "\n".join(recommendation_markdown(recommend([])))


def test_bench_md_ends_with_the_recommendation(tmp_path):
    rows = [row("scratch.onnx", 60.0, 0.50), row("kd.onnx", 70.65, 0.52)]
    paths = write_bench_report(report_of(rows), tmp_path, Constraints(min_top1=65))
    text = paths["markdown"].read_text()
    tail = text[text.index("## Recommendation"):]
    assert "**Ship `kd.onnx` in onnxruntime (fp32): top-1 70.65%" in tail
    assert "`scratch.onnx` in onnxruntime: top-1 60.00% < 65%" in tail


# ---------------------------------------------------------------- noisy latency


def test_rows_carry_their_spread_and_busy_ones_are_flagged(tmp_path):
    quiet, busy = row("quiet.onnx", 70.0, 1.0, p90=1.1), row("busy.onnx", 70.0, 1.0, p90=2.0)
    assert (quiet.spread, quiet.noisy) == (1.1, False)
    assert (busy.spread, busy.noisy) == (2.0, True)
    assert row("s.onnx", None, None, status="skipped").spread is None
    paths = write_bench_report(report_of([quiet, busy]), tmp_path)
    table = paths["markdown"].read_text()
    busy_line = next(ln for ln in table.splitlines() if ln.startswith("| busy.onnx"))
    quiet_line = next(ln for ln in table.splitlines() if ln.startswith("| quiet.onnx"))
    assert f"2.00 ({NOISY_NOTE})" in busy_line and NOISY_NOTE not in quiet_line
    assert "noisy timing (p90/p50 > 1.5) for busy.onnx (onnxruntime)" in table
    raw = json.loads(paths["json"].read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2
    assert [(r["spread"], r["noisy"]) for r in raw["rows"]] == [(1.1, False), (2.0, True)]


def test_a_version_1_bench_json_still_loads(tmp_path):
    values = report_of([row("a.onnx", 70.0, 1.0, p90=1.6)]).to_json()
    values["schema_version"] = 1
    for r in values["rows"]:
        del r["spread"], r["noisy"]
    (tmp_path / "bench.json").write_text(json.dumps(values))
    (loaded,) = load_bench_report(tmp_path / "bench.json").rows
    assert (loaded.spread, loaded.noisy) == (1.6, True)


def test_same_architecture_runs_that_disagree_on_latency_are_named():
    scratch = row("scratch/model.pt", 60.0, 1.0, runtime="eager")
    kd = row("kd/model.pt", 70.0, 1.3, runtime="eager")
    close = row("fitnets/model.pt", 70.0, 1.05, runtime="eager")
    other = row("teacher/model.pt", 93.0, 3.0, runtime="eager", params=850_000)
    (line,) = latency_disagreements([scratch, kd, close, other])
    assert line.startswith("kd/model.pt and scratch/model.pt are the same architecture in eager "
                           "but their batch-1 p50s differ by 30%")
    assert latency_disagreements([scratch, close, other]) == []
    assert "kd/model.pt and scratch/model.pt" in markdown(report_of([scratch, kd]))


def test_rows_without_spread_fields_are_still_plain_dataclasses():
    # bench.csv's columns are the row's fields: the new ones come last, after `reason`.
    names = [f.name for f in dataclasses.fields(BenchRow)]
    assert names[-3:] == ["reason", "spread", "noisy"]


# ---------------------------------------------------------------- divergence and progress


def epoch_rows(*losses: tuple[float, float]) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": t, "test_loss": v} for i, (t, v) in enumerate(losses)]


def test_divergence_is_caught_once_per_kind_with_the_fix():
    from kdpipe.train.divergence import divergence_warnings, run_warnings

    healthy = epoch_rows((2.0, 2.1), (1.5, 1.6), (1.2, 1.4))
    assert run_warnings(healthy) == {}
    exploding = epoch_rows((2.0, 2.1), (25.0, 26.0), (30.0, 31.0))
    found = run_warnings(exploding)
    assert list(found) == ["train_loss_exploded"]
    assert found["train_loss_exploded"].startswith("epoch 2: training loss 25")
    assert "lower --lr" in found["train_loss_exploded"]
    batchnorm = epoch_rows((1.0, 1.1), (0.8, 40.0))
    message = divergence_warnings(batchnorm)["test_loss_far_above_train"]
    assert "BatchNorm" in message and "--batch-size" in message
    # FitNets' hint stage: its training loss is a feature MSE, not comparable to the test CE
    assert run_warnings(epoch_rows((0.01, 2.3)), compare_test=False) == {}


def test_off_a_terminal_progress_prints_plain_lines():
    from kdpipe.progress import PlainProgress, console

    with console.capture() as captured, PlainProgress(interval_s=0) as bar:
        task = bar.add_task("epoch 1/2", total=10, info="")
        bar.update(task, advance=3, info="loss 2.1")
    assert "epoch 1/2: 3/10" in captured.get() and "loss 2.1" in captured.get()


def test_a_summary_records_warnings_only_when_there_are_some():
    from kdpipe.report.records import TrainSummary

    assert "warnings" not in TrainSummary(top1=50.0).to_json()
    assert TrainSummary(top1=50.0, warnings=["w"]).to_json()["warnings"] == ["w"]


def test_only_emulated_rows_say_why_nothing_is_recommended():
    emulated = "emulated (qemu): latency not representative"
    rec = recommend([row("a.onnx", 81.0, 40.0, reason=emulated),
                     row("b.tflite", 80.8, 35.0, reason=emulated)])
    text = "\n".join(recommendation_markdown(rec))
    assert rec.best is None and rec.emulated == 2
    assert "2 measured rows ran under an emulator" in text
    assert "accuracy not measured" not in text


def test_pipeline_limits_fall_back_on_the_bench_tables_and_both_configs_share_them():
    from kdpipe.bench.config import BenchConfig
    from kdpipe.pipeline import PipelineConfig
    from kdpipe.report.recommend import ShipLimits

    config = PipelineConfig(max_latency_ms=0.5, bench=BenchConfig(min_top1=80.0, max_latency_ms=9))
    assert config.constraints() == Constraints(min_top1=80.0, max_latency_ms=0.5)
    assert BenchConfig(max_size_mb=1.0).constraints() == Constraints(max_size_mb=1.0)
    names = {f.name for f in dataclasses.fields(ShipLimits)}
    for cls in (BenchConfig, PipelineConfig):
        assert names <= {f.name for f in dataclasses.fields(cls)}
