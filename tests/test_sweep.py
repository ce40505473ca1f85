"""The sweep: grid expansion, resumability (interrupted, failed and changed cells), the report in
the survey's shapes, the shipped configs and the `kdpipe sweep` command."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.errors import KdpipeError
from kdpipe.sweep import expand, read_sweep, run_sweep
from kdpipe.train import Trainer

from .conftest import ROOT, synthetic_dataset

# The modules themselves (an attribute import could give a re-exported function of the same name).
distill_module = importlib.import_module("kdpipe.train.distill")
sweep_module = importlib.import_module("kdpipe.sweep")

GRID = """
title = "test sweep"
seeds = [0, 1]

[base]
teacher_checkpoint = "teacher.pt"
student = "resnet20"
epochs = 2

[[grid]]
method = ["scratch", "kd"]
temperature = [4.0, 10.0]

[[grid]]
method = ["fitnets"]
hint_layer = ["middle", "final"]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class FakeDistill:
    """Stands in for `distill`: records the calls and writes a summary with a chosen top-1."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, config, *, resume=False):
        name = Path(config.out).name
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        top1 = 60.0 + config.temperature + config.seed + (config.hint_layer == "middle")
        summary = {"top1": top1, "teacher": "resnet110", "teacher_top1": 88.5, "params": 10,
                   "macs": 20, "epochs": config.epochs, "wall_time_s": 1.0}
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return summary


@pytest.fixture
def fake(monkeypatch):
    fake = FakeDistill()
    monkeypatch.setattr(sweep_module, "distill", fake)
    return fake


def test_grid_expands_to_distinct_cells_seed_by_seed(tmp_path):
    cells = expand(read_sweep(write(tmp_path, GRID)), tmp_path / "out")
    names = [c.name for c in cells]
    # scratch reads no temperature: crossed with two temperatures it is still one cell.
    assert names == [
        "scratch-s0", "kd-T4-a0.9-s0", "kd-T10-a0.9-s0",
        "fitnets-middle-h5-T4-a0.9-s0", "fitnets-final-h5-T4-a0.9-s0",
        "scratch-s1", "kd-T4-a0.9-s1", "kd-T10-a0.9-s1",
        "fitnets-middle-h5-T4-a0.9-s1", "fitnets-final-h5-T4-a0.9-s1",
    ]
    kd10 = cells[2].config
    assert (kd10.temperature, kd10.seed, kd10.epochs, kd10.model) == (10.0, 0, 2, "resnet20")
    assert kd10.out == str(tmp_path / "out" / "kd-T10-a0.9-s0")
    assert cells[2].group == "kd-T10-a0.9"


EXTRA_SEED = """
seeds = [0]
[base]
student = "resnet20"
[[grid]]
method = ["kd", "scratch"]
[[grid]]
method = ["scratch"]
seeds = [2, 1]
"""


def test_a_grid_table_with_its_own_seeds_adds_runs_after_the_top_level_seeds(tmp_path, fake):
    cells = expand(read_sweep(write(tmp_path, EXTRA_SEED)), tmp_path / "out")
    assert [c.name for c in cells] == ["kd-T4-a0.9-s0", "scratch-s0", "scratch-s2", "scratch-s1"]
    assert [c.config.seed for c in cells] == [0, 0, 2, 1]
    run_sweep(write(tmp_path, EXTRA_SEED), out=tmp_path / "out")
    md = (tmp_path / "out" / "results.md").read_text()
    # FakeDistill scores 60 + T + seed + 1 (middle hint layer): scratch gets 65, 67, 66.
    assert "| Student from scratch | 66.00 ± 1.00% |" in md
    # kd ran under seed 0 only: its margin pairs it with scratch's seed 0 (65), not the mean (66)
    assert "| 4 | 0.9 | 65.00% | +0.00 |" in md
    assert "see the Seeds column" in md
    for bad in ("seeds = []", "seeds = [1.5]", 'seeds = "1"'):
        with pytest.raises(KdpipeError, match="non-empty list of integers"):
            read_sweep(write(tmp_path, EXTRA_SEED.replace("seeds = [2, 1]", bad)))


def test_points_vary_options_together_and_bad_keys_are_errors(tmp_path):
    text = """
[base]
student = "resnet20"
[grid]
method = ["kd"]
points = [{temperature = 10, alpha = 0.2}, {temperature = 40, alpha = 0.7}]
"""
    names = [c.name for c in expand(read_sweep(write(tmp_path, text)), tmp_path)]
    assert names == ["kd-T10-a0.2-s0", "kd-T40-a0.7-s0"]
    with pytest.raises(KdpipeError, match="tempreature"):
        expand(read_sweep(write(tmp_path, text.replace("temperature = 10", "tempreature = 10"))),
               tmp_path)
    with pytest.raises(KdpipeError, match="seeds"):
        read_sweep(write(tmp_path, text.replace('student = "resnet20"', "seed = 3")))
    with pytest.raises(KdpipeError, match="unknown option"):
        read_sweep(write(tmp_path, "sedes = [1]\n"))


def test_failed_cell_is_reported_the_others_run_and_a_rerun_runs_only_it(tmp_path, monkeypatch):
    failing = FakeDistill(fail={"kd-T4-a0.9-s0"})
    monkeypatch.setattr(sweep_module, "distill", failing)
    sweep = write(tmp_path, GRID)
    with pytest.raises(KdpipeError, match="1 of 10 cells failed .*kd-T4-a0.9-s0.*boom"):
        run_sweep(sweep, out=tmp_path / "out")
    assert len(failing.calls) == 10
    assert "boom" in (tmp_path / "out" / "kd-T4-a0.9-s0" / "error.txt").read_text()
    again = FakeDistill()
    monkeypatch.setattr(sweep_module, "distill", again)
    result = run_sweep(sweep, out=tmp_path / "out")
    assert again.calls == ["kd-T4-a0.9-s0"] == result["ran"]
    assert len(result["skipped"]) == 9
    assert not (tmp_path / "out" / "kd-T4-a0.9-s0" / "error.txt").exists()


def test_changed_settings_of_a_finished_cell_are_an_error(tmp_path, fake):
    run_sweep(write(tmp_path, GRID), out=tmp_path / "out")
    with pytest.raises(KdpipeError, match="other settings .*epochs"):
        run_sweep(write(tmp_path, GRID.replace("epochs = 2", "epochs = 3")), out=tmp_path / "out")


def test_report_has_the_survey_tables_mean_std_csv_and_plot(tmp_path, fake):
    result = run_sweep(write(tmp_path, GRID), out=tmp_path / "out")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| Temperature | Alpha | Score |" in md
    assert "| 4 | 0.9 | 65.50 ± 0.71% |" in md  # seeds 0 and 1: 65 and 66
    assert "| 10 | 0.9 | 71.50 ± 0.71% | +6.00 |" in md  # the margin over scratch (65.50)
    assert "| Task | Score |" in md
    assert "| Teacher (resnet110) | 88.50% |" in md
    assert "| Mimicking middle layer | 65.50 ± 0.71% |" in md
    assert "| Mimicking final layer | 64.50 ± 0.71% |" in md
    assert "| Student from scratch |" in md
    with open(tmp_path / "out" / "kd.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["temperature"], r["alpha"], float(r["top1"]), float(r["vs_scratch"]))
            for r in rows] == [("4", "0.9", 65.5, 0.0), ("10", "0.9", 71.5, 6.0)]
    png = Path(result["files"]["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG")
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(records["cells"]) == 10 and len(records["groups"]) == 5


def test_interrupted_cell_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """Real (tiny) distill runs: Ctrl-C after the first epoch of the 2nd cell, then a rerun."""
    from kdpipe.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
    from kdpipe.models import CheckpointMeta, create, save_checkpoint

    dataset = synthetic_dataset(n_train=16, n_test=8)
    monkeypatch.setattr(distill_module, "load_training_data", lambda config: dataset)
    meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(CIFAR10_MEAN),
                          std=list(CIFAR10_STD), input_shape=[3, 32, 32])
    save_checkpoint(tmp_path / "teacher.pt", create("resnet20"), meta)
    text = f"""
seeds = [0]
[base]
teacher_checkpoint = "{tmp_path / 'teacher.pt'}"
student = "resnet20"
epochs = 2
batch_size = 8
device = "cpu"
progress = false
threads = 2
[[grid]]
method = ["scratch", "kd", "rkd"]
"""
    sweep = write(tmp_path, text)
    epochs: list[str] = []
    end_epoch = Trainer._end_epoch

    def counting_end_epoch(self):
        end_epoch(self)
        epochs.append(Path(self.config.out).name)
        if interrupt and epochs.count("kd-T4-a0.9-s0") == 1 and epochs[-1] == "kd-T4-a0.9-s0":
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", counting_end_epoch)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out=tmp_path / "out")
    assert epochs == ["scratch-s0", "scratch-s0", "kd-T4-a0.9-s0"]
    assert (tmp_path / "out" / "kd-T4-a0.9-s0" / "last.pt").exists()
    interrupt, epochs[:] = False, []
    result = run_sweep(sweep, out=tmp_path / "out")
    # scratch is not rerun; kd trains only its second epoch; rkd runs whole.
    assert epochs == ["kd-T4-a0.9-s0", "rkd-d25-ang50-s0", "rkd-d25-ang50-s0"]
    assert result["skipped"] == ["scratch-s0"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Student from scratch" in md and "RKD (distance + angle)" in md


@pytest.mark.parametrize("name, cells", [("resnet", 18), ("plaincnn", 18), ("smoke", 6),
                                         ("resnet56-short", 9), ("plaincnn-short", 9)])
def test_shipped_configs_parse(name, cells):
    spec = read_sweep(ROOT / "kdpipe" / "configs" / f"sweep-{name}.toml")
    expanded = expand(spec, Path("out"))
    assert len(expanded) == cells
    methods = {c.config.method for c in expanded}
    assert {"scratch", "kd", "fitnets", "rkd"} <= methods
    if name == "resnet":
        kd = [(c.config.temperature, c.config.alpha) for c in expanded if c.config.method == "kd"]
        assert kd == 2 * [(4, 0.9), (10, 0.2), (20, 0.5), (5, 0.2), (40, 0.7)]  # tuned first
        assert [c.config.seed for c in expanded] == 9 * [0] + 9 * [1]  # seed 1 after seed 0
        base = expanded[0].config
        assert (base.epochs, base.limit_train, base.compile, spec.seeds) == (15, None, True, [0, 1])
        assert base.teacher_checkpoint.endswith("resnet110-cifar10jpeg.th")


@pytest.mark.parametrize("name, epochs, methods", [
    ("resnet-methods", 15, ["dkd", "dist", "lskd", "at", "kd", "scratch"]),
    ("resnet-60", 60, ["scratch", "dkd"])])
def test_the_method_and_long_schedule_sweeps_share_the_resnet_protocol(name, epochs, methods):
    expanded = expand(read_sweep(ROOT / "kdpipe" / "configs" / f"sweep-{name}.toml"), Path("out"))
    assert [c.config.method for c in expanded] == methods
    assert {(c.config.epochs, c.config.lr, c.config.batch_size, c.config.seed)
            for c in expanded} == {(epochs, 0.1, 128, 0)}
    dkd = next(c.config for c in expanded if c.config.method == "dkd")
    # DKD's loss warm-up is the paper's 20 of 240 epochs, scaled to the schedule.
    assert dkd.dkd_warmup_epochs == pytest.approx(epochs * 20 / 240)
    assert (dkd.dkd_alpha, dkd.dkd_beta, dkd.temperature) == (1.0, 8.0, 4.0)


def test_cells_reading_a_teacher_cache_wait_for_the_first_that_fills_it():
    from kdpipe.sweep import plan_work

    spec = read_sweep(ROOT / "kdpipe" / "configs" / "sweep-resnet.toml")
    work = plan_work(expand(spec, Path("out")))
    by_seed = {seed: [w for w in work if w.cell.config.seed == seed] for seed in (0, 1)}
    for seed, items in by_seed.items():
        filler = next(w for w in items if w.cell.config.method != "scratch")
        assert filler.after is None  # the first KD cell of a seed fills that seed's cache
        for w in items:
            expected = None if w is filler or w.cell.config.method == "scratch" else filler.name
            assert w.after == expected, (seed, w.name)
    # The seeds' caches are distinct: seed 1 never waits on a seed-0 cell.
    assert all(w.after is None or w.after.endswith("-s1") for w in by_seed[1])


def test_cli_sweep_dry_run_and_run(tmp_path, fake):
    sweep = write(tmp_path, GRID)
    runner = CliRunner()
    dry = runner.invoke(app, ["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "kd-T10-a0.9-s1: to run" in dry.output and fake.calls == []
    done = runner.invoke(app, ["sweep", str(sweep), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert "10 cells run" in done.output and len(fake.calls) == 10


def test_cli_sweep_help_shows_the_file_format():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    # rich markup would swallow unescaped [base] / [[grid]] as style tags
    assert "[base]" in result.output and "[[grid]]" in result.output
    assert "points = [{temperature = 10, alpha = 0.2}" in result.output
