"""`kdpipe deploy`: the bundle's files, a usage snippet that really runs, and atomic replacement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.deploy import bundle
from kdpipe.deploy.bundle import build_bundle
from kdpipe.errors import KdpipeError
from kdpipe.export.metadata import artifact_sha256, path_size
from kdpipe.runtime import runtime
from kdpipe.runtime.artifact import open_artifact

from .test_bench import make_artifacts, sidecar

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_artifacts(tmp_path_factory.mktemp("deploy") / "artifacts")


def picture(path: Path) -> Path:
    """A 48x40 RGBA PNG: the snippet must convert to RGB and resize to 32x32 itself."""
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 48, 4), dtype=np.uint8), "RGBA").save(path)
    return path


def run_snippet(folder: Path, script: str, image: Path) -> str:
    done = subprocess.run([sys.executable, script, str(image)], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_bundle_has_everything_an_app_needs_and_its_snippet_runs(tiny, tmp_path, kind):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["deploy", str(tiny[kind]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    name = tiny[kind].name
    assert {p.name for p in out.iterdir()} == {name, f"{name}.json", "labels.txt", "predict.py",
                                               "README.md"}
    artifact = open_artifact(tiny[kind])
    assert (out / "labels.txt").read_text().splitlines() == list(artifact.classes)
    assert json.loads((out / f"{name}.json").read_text())["format"] == kind
    readme = (out / "README.md").read_text()
    assert "```python" in readme and (out / "predict.py").read_text().strip() in readme
    assert "[0, 1]" in readme and "NCHW" in readme and "32x32" in readme

    image = picture(tmp_path / "photo.png")
    label = run_snippet(out, "predict.py", image)
    # the snippet's answer is the runtime's answer on the same preprocessing
    from PIL import Image

    rgb = Image.open(image).convert("RGB").resize((32, 32), Image.BILINEAR)
    x = np.ascontiguousarray(np.asarray(rgb, np.float32).transpose(2, 0, 1)[None] / 255.0)
    logits = runtime(kind if kind == "torchscript" else "onnxruntime").load(artifact, 1).run(x)
    assert label == artifact.classes[int(logits.argmax())]


def test_core_ml_bundle_carries_a_swift_snippet(tiny, tmp_path):
    package = tmp_path / "student.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    sidecar(package, tiny["onnx"], format="coreml", runtime="coreml", input_name="image",
            output_name="classLabel_probs", output_kind="probabilities",
            label_output_name="classLabel", batch_sizes=[1], dynamic_batch=False,
            size_bytes=path_size(package), sha256=artifact_sha256(package))  # what deploy checks
    out = build_bundle(package, tmp_path / "ios")
    assert (out / "student.mlpackage" / "Manifest.json").is_file()
    swift = (out / "Classify.swift").read_text()
    assert "import CoreML" in swift and "MLMultiArray" in swift and "/ 255" in swift
    assert '"image": input' in swift and 'featureValue(for: "classLabel")' in swift
    assert "```swift" in (out / "README.md").read_text()


def test_a_checkpoint_is_not_an_app_artifact(tiny, tmp_path):
    result = runner.invoke(app, ["deploy", str(tiny["checkpoint"]), "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "export it first" in result.output
    assert not (tmp_path / "b").exists()


def test_bundle_replaces_an_old_bundle_but_never_a_foreign_folder(tiny, tmp_path):
    out = build_bundle(tiny["onnx"], tmp_path / "b")
    (out / "stale.txt").write_text("from an older bundle")
    build_bundle(tiny["onnx"], out)
    assert not (out / "stale.txt").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(KdpipeError, match="not a kdpipe bundle"):
        build_bundle(tiny["onnx"], foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_failure_while_building_leaves_no_bundle(tiny, tmp_path, monkeypatch):
    def broken(src, dest):
        raise OSError("disk full")

    monkeypatch.setattr(bundle, "_copy", broken)
    with pytest.raises(OSError):
        build_bundle(tiny["onnx"], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch_sizes", ["1", "1,4"])
def test_ort_bundle_carries_phone_snippets_and_says_when_a_phone_cannot_accelerate_it(
        tmp_path, batch_sizes):
    import warnings

    import torch

    from kdpipe.export import export_checkpoint
    from kdpipe.models import CheckpointMeta, create, save_checkpoint
    from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD

    from .conftest import synthetic_dataset

    torch.manual_seed(0)
    meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(ZOO_MEAN), std=list(ZOO_STD),
                          input_shape=[3, 32, 32])
    save_checkpoint(tmp_path / "r.pt", create("resnet20").eval(), meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (result,) = export_checkpoint(tmp_path / "r.pt", "ort", "none", tmp_path / "export",
                                      dataset=synthetic_dataset(n_train=16, n_test=20),
                                      parity_size=20, batch_sizes=batch_sizes)
    out = build_bundle(result.path, tmp_path / "app")
    assert {p.name for p in out.iterdir()} == {"resnet20.ort", "resnet20.ort.json", "labels.txt",
                                               "predict.py", "README.md", "Classifier.kt",
                                               "classify.ts"}
    kotlin, typescript = (out / "Classifier.kt").read_text(), (out / "classify.ts").read_text()
    assert "ai.onnxruntime" in kotlin and '"input" to tensor' in kotlin and "/ 255f" in kotlin
    assert "onnxruntime-react-native" in typescript and '"airplane"' in typescript
    readme = (out / "README.md").read_text()
    static = batch_sizes == "1"
    assert ("addNnapi()" in kotlin) is static  # NNAPI takes nothing of a dynamic-batch file
    assert ("--batch-sizes 1" in readme) is not static
    # The Python snippet runs the .ort file as the runtime does.
    image = picture(tmp_path / "photo.png")
    label = run_snippet(out, "predict.py", image)
    assert label in CIFAR10_CLASSES


def test_the_bundle_runs_from_another_working_folder(tiny, tmp_path):
    out = tmp_path / "bundle"
    build_bundle(tiny["onnx"], out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # predict.py finds labels.txt and the model beside itself, not in the working folder
    label = run_snippet(elsewhere, str(out / "predict.py"), picture(tmp_path / "photo.png"))
    assert label in (out / "labels.txt").read_text().splitlines()
