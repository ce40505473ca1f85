"""A model registered from the user's own code (docs/python-api.md's `tinynet`) through the command
line: `--import MODULE` makes it known to bench (and its memory subprocess), eval and export."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.data import CIFAR10_CLASSES
from kdpipe.models import MODELS, CheckpointMeta, create, save_checkpoint
from tests.conftest import synthetic_dataset, write_image_folder

runner = CliRunner()
MODULE = "kdpipe_user_tinynet"  # a name no other test imports
MODEL = "user_tinynet"

SOURCE = f'''
import torch
from torch import nn

from kdpipe.models import MODELS


class TinyNet(nn.Module):
    feature_layers = {{"stage1": "block1", "embedding": "flatten"}}

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.block1(x))))


@MODELS.register("{MODEL}")
def user_tinynet(num_classes: int = 10) -> nn.Module:
    return TinyNet(num_classes)
'''


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    """The user's module in its own folder, and a checkpoint of its model; unregistered after."""
    folder = tmp_path_factory.mktemp("user-code")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        __import__(MODULE)
        checkpoint = folder / "run" / "model.pt"
        checkpoint.parent.mkdir()
        meta = CheckpointMeta(model=MODEL, model_kwargs={}, num_classes=10,
                              classes=list(CIFAR10_CLASSES), mean=[0.5] * 3, std=[0.25] * 3,
                              input_shape=[3, 32, 32])
        save_checkpoint(checkpoint, create(MODEL).eval(), meta)
        yield folder, checkpoint
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)
        MODELS._entries.pop(MODEL, None)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_bench_measures_the_peak_memory_of_a_user_model(user_code, tmp_path, monkeypatch):
    folder, checkpoint = user_code
    monkeypatch.chdir(tmp_path)  # the module is not in the working folder: found on sys.path
    out = tmp_path / "bench"
    result = invoke("bench", checkpoint, "--import", MODULE, "--runtimes", "eager",
                    "--batch-sizes", 1, "--warmup", 1, "--iters", 3, "--min-time-s", 0,
                    "--no-accuracy", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["status"] == "ok" and "peak RSS not measured" not in row["reason"], row
    assert row["peak_rss_mb"] and row["peak_rss_mb"] > 10
    assert report["protocol"]["imports"] == [MODULE]  # recorded with the numbers


def test_a_py_file_works_as_well_from_another_folder(user_code, tmp_path, monkeypatch):
    folder, checkpoint = user_code
    monkeypatch.chdir(tmp_path)
    write_image_folder(synthetic_dataset(n_train=10, n_test=20), tmp_path / "images")
    result = invoke("eval", checkpoint, "--import", folder / f"{MODULE}.py",
                    "--data", tmp_path / "images", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "on 20 test images" in result.output


def test_the_working_folder_is_searched_like_python_m(user_code, tmp_path, monkeypatch):
    """`kdpipe` is a console script, so the working folder is not on sys.path by itself."""
    folder, _ = user_code
    (tmp_path / "kdpipe_user_extra.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        result = invoke("list", "--import", "kdpipe_user_extra")
        assert result.exit_code == 0, result.output
        assert "kdpipe_user_extra" in sys.modules
    finally:
        sys.modules.pop("kdpipe_user_extra", None)


@pytest.mark.parametrize("spec, needle", [("kdpipe_no_such_module", "no module named"),
                                          ("missing/models.py", "no such file")])
def test_an_unknown_import_is_a_one_line_error(spec, needle, tmp_path):
    result = invoke("bench", tmp_path / "model.pt", "--import", spec)
    assert result.exit_code == 2
    assert result.output.startswith("error: --import"), result.output
    assert needle in result.output and "Traceback" not in result.output
