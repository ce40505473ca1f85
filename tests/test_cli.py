"""The `kdpipe` command line: help, config files, bad input as one message and non-zero exit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.models import create, save_checkpoint
from kdpipe.models.checkpoint import CheckpointMeta

from .conftest import (
    SHARED_TARBALL,
    SHARED_WEIGHTS,
    shared_file,
    synthetic_dataset,
    write_image_folder,
)

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *needles: str) -> None:
    """Non-zero exit, no traceback, and the message names what is wrong."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def image_folder(tmp_path, n_train=40, n_test=20):
    return write_image_folder(synthetic_dataset(n_train, n_test), tmp_path / "images")


def test_help_lists_the_stage_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval"):
        assert command in result.output


def test_unknown_model_lists_available(tmp_path):
    result = invoke("train", "--model", "resnet7", "--data", tmp_path, "--out", tmp_path / "r")
    assert_clean_failure(result, "resnet7", "resnet20", "resnet110")


def test_missing_data_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.tar.gz"
    result = invoke("train", "--data", missing, "--out", tmp_path / "r", "--epochs", "1")
    assert_clean_failure(result, "nowhere.tar.gz")


def test_missing_checkpoint_names_the_path(tmp_path):
    result = invoke("eval", tmp_path / "nope.pt")
    assert_clean_failure(result, "nope.pt")


def test_config_file_unknown_key_and_wrong_type(tmp_path):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('modle = "resnet20"\n')
    assert_clean_failure(invoke("train", "--config", bad_key), "modle")
    bad_type = tmp_path / "bad.yaml"
    bad_type.write_text("epochs: many\n")
    assert_clean_failure(invoke("train", "--config", bad_type), "epochs")


def test_train_then_eval_end_to_end_with_config_and_override(tmp_path):
    root = image_folder(tmp_path)
    config = tmp_path / "run.toml"
    out = tmp_path / "run"
    config.write_text(
        f'model = "resnet20"\ndata = "{root}"\nepochs = 5\nbatch_size = 20\n'
        f'out = "{out}"\nprogress = false\ndevice = "cpu"\n'
    )
    result = invoke("train", "--config", config, "--epochs", "1")  # the flag overrides the file
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert summary["train_images"] == 40
    result = invoke("eval", out / "model.pt", "--data", root)
    assert result.exit_code == 0, result.output
    assert f"{summary['top1']:.2f}%" in result.output


def test_eval_refuses_a_checkpoint_for_other_classes(tmp_path):
    root = image_folder(tmp_path)
    meta = CheckpointMeta(
        model="resnet20",
        model_kwargs={},
        num_classes=10,
        classes=[f"c{i}" for i in range(10)],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_shape=[3, 32, 32],
    )
    save_checkpoint(tmp_path / "other.pt", create("resnet20"), meta)
    assert_clean_failure(invoke("eval", tmp_path / "other.pt", "--data", root), "classes")


def test_shared_resnet20_scores_about_81_percent_on_the_jpeg_test_set():
    weights = shared_file(SHARED_WEIGHTS / "resnet20-12fca82f.th")
    data = shared_file(SHARED_TARBALL)
    torch.set_num_threads(2)
    result = invoke("eval", weights, "--data", data, "--device", "cpu")
    assert result.exit_code == 0, result.output
    top1 = float(result.output.split("top-1 ")[1].split("%")[0])
    assert 80.0 <= top1 <= 82.0
    assert "10000 test images" in result.output


@pytest.mark.parametrize("command", ["train", "eval"])
def test_every_command_has_help(command):
    assert invoke(command, "--help").exit_code == 0


def test_epoch_lines_name_the_run_and_a_finished_resume_says_complete(tmp_path):
    root = image_folder(tmp_path)
    out = tmp_path / "myrun"
    args = ("train", "--model", "plaincnn_student", "--data", root, "--epochs", "1",
            "--batch-size", "20", "--device", "cpu", "--no-progress", "--out", out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "[myrun] epoch 1/1" in result.output
    assert "myrun: top-1 " in result.output and "1 epoch," in result.output  # not "1 epochs"
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "is complete" in " ".join(result.output.split())  # rich wraps long paths
    assert "resuming" not in result.output


def test_flags_show_no_bool_metavar():
    result = invoke("bench", "--help")
    assert result.exit_code == 0
    assert "--no-accuracy" in result.output
    line = next(ln for ln in result.output.splitlines() if "--no-accuracy" in ln)
    assert "<bool>" not in line
