"""`kdpipe export`: every target x quantization this machine runs, their metadata, dynamic
batches, refusals before any work, and a failing parity check that leaves nothing behind.

fp32 parity uses a random-init ResNet20 on synthetic images (outputs agree to ~1e-5, so top-1
agreement is exact even for near-uniform logits). Accuracy-sensitive int8 checks use the shared
pretrained ResNet20 on real JPEG CIFAR-10 images and skip where ../shared is absent. Core ML is
converted and its spec checked (prediction needs macOS). Exports are shared per module to keep
the whole file within a few minutes on two cores.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.errors import KdpipeError
from kdpipe.export import base, export_checkpoint, read_embedded_metadata, read_metadata
from kdpipe.export.api import ExportFailed, ExportResult
from kdpipe.export.base import Normalized, batch_variant, package_available
from kdpipe.export.config import ExportConfig, plan, support_table
from kdpipe.export.metadata import (
    SCHEMA_VERSION,
    ArtifactMetadata,
    artifact_sha256,
    path_size,
    sidecar_path,
)
from kdpipe.export.parity import compare
from kdpipe.export.targets import TARGETS
from kdpipe.models import CheckpointMeta, create, load_checkpoint, save_checkpoint
from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD
from kdpipe.runinfo import cpu_isa

from .conftest import (
    SHARED_TARBALL,
    SHARED_WEIGHTS,
    fresh_python,
    synthetic_dataset,
    write_image_folder,
)

runner = CliRunner()
PRETRAINED = SHARED_WEIGHTS / "resnet20-12fca82f.th"
has_executorch = pytest.mark.skipif(not package_available("executorch"),
                                    reason="executorch is not installed (kdpipe[executorch])")
has_coremltools = pytest.mark.skipif(not package_available("coremltools"),
                                     reason="coremltools is not installed (kdpipe[coreml])")
# Fields a reader relies on; each must be filled in every sidecar.
REQUIRED = ["format", "runtime", "quantization", "file", "size_bytes", "sha256", "classes",
            "input_name", "input_shape", "input_shape_batched", "output_name", "model", "params",
            "macs", "source_checkpoint", "source_sha256", "kdpipe_version", "created", "mean",
            "std"]


# ---------------------------------------------------------------- fixtures


def quiet_export(*args, **kwargs) -> list[ExportResult]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters' deprecation and version notices
        return export_checkpoint(*args, **kwargs)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(model="resnet20", model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(ZOO_MEAN), std=list(ZOO_STD),
                          input_shape=[3, 32, 32])
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    save_checkpoint(path, create("resnet20").eval(), meta)
    return path


@pytest.fixture(scope="module")
def synthetic_exports(random_checkpoint, tmp_path_factory) -> dict[str, ExportResult]:
    """fp32/fp16 ONNX and fp32 ExecuTorch (where installed) of a random-init ResNet20."""
    out = tmp_path_factory.mktemp("synthetic")
    data = synthetic_dataset(n_train=64, n_test=100)
    options = dict(dataset=data, parity_size=100, batch_sizes="1,4")
    results = quiet_export(random_checkpoint, "onnx", "none,fp16", out, **options)
    if package_available("executorch"):
        results += quiet_export(random_checkpoint, "executorch", "none", out, **options)
    return {r.path.name: r for r in results}


def real_subset(train_per_class: int, test_per_class: int):
    """The first images of each class from the shared JPEG tarball (no full decode)."""
    from PIL import Image

    from kdpipe.data import Dataset

    want = {"train": train_per_class, "test": test_per_class}
    found: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    with tarfile.open(SHARED_TARBALL) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            per_class = found[parts[-3]].setdefault(parts[-2], [])
            if len(per_class) < want[parts[-3]]:
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                per_class.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            images += found[name][cls]
            labels += [label] * len(found[name][cls])
        return torch.stack(images), torch.tensor(labels)

    (train_x, train_y), (test_x, test_y) = split("train"), split("test")
    return Dataset(train_images=train_x, train_labels=train_y, test_images=test_x,
                   test_labels=test_y, classes=CIFAR10_CLASSES, source="shared JPEG subset",
                   source_hash="subset")


@pytest.fixture(scope="module")
def pretrained_int8(tmp_path_factory) -> dict[str, ExportResult]:
    """INT8 ONNX and ExecuTorch of the pretrained ResNet20, calibrated and checked on real data."""
    if not (PRETRAINED.exists() and SHARED_TARBALL.exists()):
        pytest.skip("../shared weights and data are absent")
    out = tmp_path_factory.mktemp("int8")
    targets = "onnx,executorch" if package_available("executorch") else "onnx"
    data = real_subset(train_per_class=13, test_per_class=50)
    results = quiet_export(PRETRAINED, targets, "int8", out, dataset=data,
                           calibration_size=128, parity_size=500, batch_sizes="1,8")
    return {r.target: r for r in results}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(synthetic_dataset(n_train=20, n_test=20), tmp_path / "images")


def invoke(*args) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, ["export", *map(str, args)])


def assert_one_line_refusal(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error:"), result.output
    message = " ".join(line.strip() for line in lines)  # rich wraps long lines at 80 columns
    for needle in needles:
        assert needle in message, result.output


# ---------------------------------------------------------------- design: registry, imports


def test_every_target_is_registered_and_tabled():
    assert TARGETS.names() == ["coreml", "executorch", "litert", "ncnn", "onnx", "openvino",
                               "ort", "torchscript"]
    table = support_table()
    for name in TARGETS.names():
        assert f"| {name} | {TARGETS.get(name).suffix} |" in table
    assert "pip install 'kdpipe[executorch]'" in table and "pip install 'kdpipe[coreml]'" in table


def test_import_needs_no_optional_package_and_metadata_no_torch():
    code = ("import sys\n"
            "import kdpipe.export.metadata\n"
            "assert 'torch' not in sys.modules, 'metadata imported torch'\n"
            "import kdpipe.export.targets, kdpipe.export.api\n"
            "heavy = [m for m in ('executorch', 'coremltools') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    fresh_python(code)


def test_batch_variant_names():
    assert batch_variant(Path("out/resnet20.int8.pte"), 32) == Path("out/resnet20.int8.b32.pte")
    assert batch_variant(Path("r.mlpackage"), 1) == Path("r.b1.mlpackage")


# ---------------------------------------------------------------- refusals before any work


@pytest.mark.parametrize("args, needles", [
    (["--target", "torchscript", "--quantize", "int8"], ["torchscript", "supports: none"]),
    (["--target", "executorch", "--quantize", "fp16"], ["supports: none, int8"]),
    (["--target", "tflite"], ["unknown export target 'tflite'",
                              "coreml, executorch, litert, ncnn, onnx, openvino, ort, "
                              "torchscript"]),
    (["--target", "onnx", "--quantize", "int4"], ["unknown --quantize int4", "none, fp16, int8"]),
    (["--target", "onnx", "--batch-sizes", "1,x"], ["--batch-sizes"]),
])
def test_refusals_come_before_any_work(tmp_path, args, needles):
    # The checkpoint does not exist: a refusal must come before anything reads it.
    result = invoke(tmp_path / "absent.pt", *args, "--out", tmp_path / "out")
    assert_one_line_refusal(result, *needles)
    assert not (tmp_path / "out").exists()


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "package_available", lambda name: False)
    for target, extra in (("executorch", "kdpipe[executorch]"), ("coreml", "kdpipe[coreml]")):
        with pytest.raises(KdpipeError, match=re.escape(f"pip install '{extra}'")):
            plan(ExportConfig(target=target))
        result = invoke(tmp_path / "absent.pt", "--target", target, "--out", tmp_path / "out")
        # The CLI line is checked up to the extra's name: cliutil.fail prints messages as rich
        # markup, which swallows "[executorch]" until it escapes them.
        assert_one_line_refusal(result, f"needs the {target.replace('coreml', 'coremltools')} "
                                        "package: pip install 'kdpipe")


def test_all_skips_what_cannot_be_done_with_the_reason(monkeypatch):
    monkeypatch.setattr(base, "package_available", lambda name: name != "coremltools")
    jobs, skipped = plan(ExportConfig(target="all", quantize="fp16"))
    assert [(j.target.name, j.quantize) for j in jobs] == [
        ("litert", "fp16"), ("ncnn", "fp16"), ("onnx", "fp16"), ("openvino", "fp16"),
        ("ort", "fp16")]
    reasons = {name: why for name, _, why in skipped}
    assert "kdpipe[coreml]" in reasons["coreml"]
    assert "supports: none, int8" in reasons["executorch"]
    assert "supports: none" in reasons["torchscript"]


# ---------------------------------------------------------------- ONNX


def test_onnx_is_one_checked_file_with_a_dynamic_batch(synthetic_exports, random_checkpoint):
    import onnx
    import onnxruntime as ort

    path = synthetic_exports["resnet20.onnx"].path
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.glob("resnet20.onnx*")) == [
        "resnet20.onnx", "resnet20.onnx.json"]  # no external-data file beside it
    model = load_checkpoint(random_checkpoint)
    folded = Normalized(model, ZOO_MEAN, ZOO_STD).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.rand(batch, 3, 32, 32)
        (out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, folded(x).numpy(), atol=1e-4)


def test_fp16_onnx_keeps_float32_io(synthetic_exports):
    import onnx

    result = synthetic_exports["resnet20.fp16.onnx"]
    proto = onnx.load(str(result.path))
    float32 = onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == float32
    assert proto.graph.output[0].type.tensor_type.elem_type == float32
    assert result.metadata.quantization == "fp16" and result.parity.passed


# ---------------------------------------------------------------- metadata


def test_sidecars_and_embedded_metadata_are_complete(synthetic_exports):
    for name, result in synthetic_exports.items():
        meta = read_metadata(result.path)
        assert meta == result.metadata
        for key in REQUIRED:
            assert getattr(meta, key) not in (None, "", [], 0), (name, key)
        assert meta.schema_version == SCHEMA_VERSION and meta.normalization_folded
        assert meta.input_range == [0.0, 1.0] and meta.input_layout == "NCHW"
        assert meta.sha256 == artifact_sha256(result.path)
        assert meta.size_bytes == path_size(result.path)
        assert meta.classes == list(CIFAR10_CLASSES) and meta.params == 269722
        assert meta.parity.checked and meta.parity.passed and meta.parity.n == 100
        assert meta.dynamic_batch and meta.input_shape_batched == ["batch", 3, 32, 32]
        embedded = read_embedded_metadata(result.path)
        if result.path.suffix == ".pte":
            assert embedded is None  # no place for it in the format: the sidecar is the copy
            assert meta.max_batch_size == 4
            continue
        assert embedded["file"] == "" and embedded["parity"] is None
        # The embedded copy names the checkpoint, never the exporting machine's path.
        assert embedded["source_checkpoint"] == Path(meta.source_checkpoint).name
        file_facts = ("file", "size_bytes", "sha256", "parity", "source_checkpoint")
        assert {k: v for k, v in embedded.items() if k not in file_facts} == {
            k: v for k, v in meta.to_dict().items() if k not in file_facts}
        assert meta.preprocessing["decoder"].startswith("PIL ")


def test_metadata_of_another_schema_version_is_refused(tmp_path):
    artifact = tmp_path / "m.onnx"
    values = ArtifactMetadata(format="onnx", runtime="onnxruntime", quantization="fp32",
                              classes=["a"], input_name="input", output_name="logits",
                              input_shape=[3, 32, 32], input_shape_batched=["batch", 3, 32, 32],
                              model="resnet20").to_dict()
    sidecar_path(artifact).write_text(json.dumps({**values, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(KdpipeError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        read_metadata(artifact)
    sidecar_path(artifact).write_text(json.dumps(values))
    assert read_metadata(artifact).format == "onnx"
    # A version-1 file (before `preprocessing` and the kernel check) still reads.
    old = {k: v for k, v in values.items() if k != "preprocessing"}
    sidecar_path(artifact).write_text(json.dumps({**old, "schema_version": 1}))
    assert read_metadata(artifact).preprocessing == {}


# ---------------------------------------------------------------- parity rules


def test_parity_rules():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1000, 10)).astype(np.float32)
    labels = reference.argmax(1)
    assert compare(reference + 1e-5, reference, labels, "fp32").passed
    flipped = reference.copy()
    flipped[:2] = flipped[:2, ::-1]  # two of 1000 top-1s change: 99.8% < 99.9%
    report = compare(flipped, reference, labels, "fp32")
    assert not report.passed and "99.80%" in report.reason
    worse = reference.copy()
    worse[:15] = worse[:15, ::-1]  # 1.5 points of accuracy lost
    assert not compare(worse, reference, labels, "int8").passed
    assert compare(flipped, reference, labels, "int8").passed  # 0.2 points lost
    assert not compare(reference * np.nan, reference, labels, "fp16").passed
    probabilities = np.exp(reference) / np.exp(reference).sum(1, keepdims=True)
    report = compare(probabilities, reference, labels, "fp32", output_kind="probabilities")
    assert report.passed and report.compared == "log_probabilities"
    assert report.max_abs_logit_diff < 1e-4


# ---------------------------------------------------------------- ExecuTorch


@has_executorch
def test_executorch_runs_every_batch_up_to_its_bound(synthetic_exports):
    from executorch.runtime import Runtime

    result = synthetic_exports["resnet20.pte"]
    assert result.parity.batch_sizes_run == [1, 4]
    method = Runtime.get().load_program(result.path).load_method("forward")
    for batch in (1, 3, 4):
        (out,) = method.execute([torch.rand(batch, 3, 32, 32)])
        assert out.shape == (batch, 10)


# ---------------------------------------------------------------- INT8 on the pretrained model


def test_int8_onnx_is_small_and_accurate(pretrained_int8):
    result = pretrained_int8["onnx"]
    meta = read_metadata(result.path)
    assert meta.quantization == "int8" and "QDQ" in meta.quantization_detail
    assert meta.calibration == {"data": "shared JPEG subset train split", "split": "train",
                                "n": 128, "seed": 0}
    assert meta.size_bytes <= 350_000  # ~0.27M int8 weights and the graph
    parity = meta.parity
    assert parity.passed and parity.n == 500
    assert parity.pytorch_top1 - parity.artifact_top1 <= 1.0
    assert parity.top1_agreement >= 95.0
    assert parity.pytorch_top1 > 70.0  # the pretrained net: ~81% on the JPEG test set


@has_executorch
def test_int8_executorch_is_small_and_accurate(pretrained_int8):
    meta = read_metadata(pretrained_int8["executorch"].path)
    assert meta.quantization == "int8" and meta.max_batch_size == 8
    assert meta.size_bytes < 400_000
    assert meta.parity.passed and meta.parity.batch_sizes_run == [1, 8]
    assert meta.parity.pytorch_top1 - meta.parity.artifact_top1 <= 1.0


def test_int8_sidecar_names_its_scheme_the_gate_and_the_cpu(pretrained_int8):
    meta = read_metadata(pretrained_int8["onnx"].path)
    scheme = meta.details["int8_scheme"]
    assert "7 bits" in scheme["weights"] and "saturate" in scheme["reason"]
    parity = meta.parity
    assert parity.min_agreement == 97.0 and parity.top1_agreement >= 97.0
    # The integer kernels were compared with the file's float simulation (ORT, optimizations off).
    assert parity.kernel_agreement is not None and parity.kernel_agreement >= 98.0
    assert parity.machine["isa"] == cpu_isa() and parity.machine["runtime"] == "onnxruntime"
    assert parity.machine["runtime_version"] and parity.machine["cpu"]


def test_int8_agreement_gate_fails_a_broken_quantization(tmp_path, monkeypatch):
    """Calibration ranges from too-dark images clip activations: the top-1 moves on a quarter of
    the images. The accuracy gate is lifted so that only the agreement gate can refuse it."""
    if not (PRETRAINED.exists() and SHARED_TARBALL.exists()):
        pytest.skip("../shared weights and data are absent")
    from kdpipe.export import onnx as onnx_target
    from kdpipe.export import parity

    real = onnx_target.CONVERTERS["int8"]

    def broken(path, calibration):
        return real(path, replace(calibration, images=calibration.images * 0.5))

    monkeypatch.setitem(onnx_target.CONVERTERS, "int8", broken)
    monkeypatch.setattr(parity, "MAX_TOP1_DROP", 100.0)
    data = real_subset(train_per_class=13, test_per_class=20)
    with pytest.raises(ExportFailed) as failed:
        quiet_export(PRETRAINED, "onnx", "int8", tmp_path, dataset=data, calibration_size=128,
                     parity_size=200, batch_sizes="1")
    (result,) = failed.value.results
    assert result.status == "failed" and "agreement with PyTorch" in result.reason
    assert result.metadata.parity.top1_agreement < 97.0
    assert list(tmp_path.iterdir()) == []  # nothing published


def test_int8_kernels_that_disagree_with_their_simulation_fail(tmp_path, monkeypatch,
                                                               random_checkpoint):
    """What saturating U8S8 kernels on an AVX2 CPU without VNNI look like to the gate: the
    optimized session's predictions differ from the float simulation of the same file."""
    from kdpipe.runtime.onnxruntime import OnnxRuntime

    real = OnnxRuntime.load

    def saturating(self, artifact, threads):
        session = real(self, artifact, threads)
        if artifact.quantization != "int8":
            return session
        fast = session.run
        session.run = lambda x: np.roll(fast(x), 1, axis=1) if len(x) > 1 else fast(x)
        return session

    monkeypatch.setattr(OnnxRuntime, "load", saturating)
    monkeypatch.setattr("kdpipe.export.parity.MAX_TOP1_DROP", 100.0)
    monkeypatch.setattr("kdpipe.export.parity.MIN_INT8_AGREEMENT", 0.0)
    with pytest.raises(ExportFailed) as failed:
        quiet_export(random_checkpoint, "onnx", "int8", tmp_path, parity_size=40,
                     dataset=synthetic_dataset(n_train=64, n_test=40), batch_sizes="1,4")
    (result,) = failed.value.results
    assert "int8 kernels agree with the file's float simulation" in result.reason
    assert result.metadata.parity.kernel_agreement < 98.0


def test_batch_1_exports_have_a_static_input_shape(random_checkpoint, tmp_path, monkeypatch):
    import onnx

    # A random-init net's near-uniform logits flip under any int8 rounding; shapes are the point.
    monkeypatch.setattr("kdpipe.export.parity.MIN_INT8_AGREEMENT", 0.0)
    data = synthetic_dataset(n_train=64, n_test=20)
    results = quiet_export(random_checkpoint, "onnx,ort", "none,int8", tmp_path, dataset=data,
                           parity_size=20, calibration_size=64, batch_sizes="1")
    by_name = {r.path.name: r for r in results}
    assert sorted(by_name) == ["resnet20.int8.onnx", "resnet20.int8.ort", "resnet20.onnx",
                               "resnet20.ort"]
    for name in ("resnet20.onnx", "resnet20.int8.onnx"):
        proto = onnx.load(str(tmp_path / name))
        for value in (*proto.graph.input, *proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), (name, value)
        assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [
            1, 3, 32, 32]
    for result in results:
        meta = read_metadata(result.path)
        assert meta.batch_sizes == [1] and not meta.dynamic_batch
        assert meta.input_shape_batched == [1, 3, 32, 32] and meta.parity.passed
    # Fixed shapes are what ONNX Runtime Mobile's NNAPI provider needs: it takes every node.
    nnapi = by_name["resnet20.onnx"].metadata.details["mobile_usability"]["NNAPI"]
    assert nnapi["supported"] == nnapi["nodes"] > 0


def test_ort_format_is_checked_benchable_and_carries_its_metadata(synthetic_exports,
                                                                  random_checkpoint, tmp_path):
    import onnxruntime as ort

    data = synthetic_dataset(n_train=64, n_test=40)
    (result,) = quiet_export(random_checkpoint, "ort", "none", tmp_path, dataset=data,
                             parity_size=40, batch_sizes="1,4")
    assert result.path.name == "resnet20.ort" and result.path.read_bytes()[4:8] == b"ORTM"
    meta = read_metadata(result.path)
    assert meta.format == "ort" and meta.runtime == "onnxruntime" and meta.parity.passed
    assert meta.parity.top1_agreement == 100.0 and meta.dynamic_batch
    dynamic = meta.details["mobile_usability"]["NNAPI"]
    assert dynamic["supported"] == 0  # a dynamic batch: the Android provider takes nothing
    assert read_embedded_metadata(result.path)["format"] == "ort"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    onnx_session = ort.InferenceSession(str(synthetic_exports["resnet20.onnx"].path),
                                        providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x})[0],
                               onnx_session.run(None, {"input": x})[0], atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.ort", "resnet20.ort.json"]


def test_no_path_of_the_exporting_machine_is_inside_an_artifact(random_checkpoint, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr("kdpipe.export.parity.MIN_INT8_AGREEMENT", 0.0)  # a random-init net
    data = synthetic_dataset(n_train=64, n_test=20)
    targets = ["onnx", "ort", "torchscript"] + (["executorch"] if package_available("executorch")
                                                 else [])
    results = []
    for target in targets:
        quantize = "none,int8" if target != "torchscript" else "none"
        results += quiet_export(random_checkpoint, target, quantize, tmp_path / "out",
                                dataset=data, parity_size=20, calibration_size=64,
                                batch_sizes="1,2")
    folders = {str(random_checkpoint.parent), str(tmp_path), str(Path.cwd()), str(Path.home())}
    for result in results:
        blob = result.path.read_bytes()
        for folder in folders:
            assert folder.encode() not in blob, (result.path.name, folder)
        assert b"resnet20.pt" in blob or result.target == "executorch"  # named, not located
        # The sidecar keeps the path the user typed.
        assert read_metadata(result.path).source_checkpoint == str(random_checkpoint)


# ---------------------------------------------------------------- Core ML


@has_coremltools
def test_coreml_converts_with_checked_specs(random_checkpoint, tmp_path):
    data = synthetic_dataset(n_train=16, n_test=20)
    options = dict(dataset=data, parity_size=20)
    # A batch-4 file only once: each batch size is one more conversion.
    results = quiet_export(random_checkpoint, "coreml", "none,fp16", tmp_path,
                           batch_sizes="1", **options)
    results += quiet_export(random_checkpoint, "coreml", "int8", tmp_path, batch_sizes="1,4",
                            **options)
    by_name = {r.path.name: r for r in results}
    assert sorted(by_name) == sorted(["resnet20.b1.mlpackage", "resnet20.fp16.b1.mlpackage",
                                      "resnet20.int8.b1.mlpackage", "resnet20.int8.b4.mlpackage"])
    for name, result in by_name.items():
        meta = read_metadata(result.path)
        spec = meta.details["spec"]
        assert not meta.parity.checked and "macOS" in meta.parity.reason, name
        assert any("parity not checked" in note for note in meta.notes)
        assert read_embedded_metadata(result.path)["classes"] == list(CIFAR10_CLASSES)
        if meta.batch_sizes == [1]:
            assert meta.output_kind == "probabilities" and meta.label_output_name == "classLabel"
            assert spec["class_labels"] == 10 and "classify" in spec["op_types"]
        else:
            assert meta.output_name == "logits" and spec["inputs"] == {"input": [4, 3, 32, 32]}
    assert "constexpr_affine_dequantize" in by_name["resnet20.int8.b1.mlpackage"].metadata.details[
        "spec"]["op_types"]
    assert by_name["resnet20.int8.b1.mlpackage"].metadata.size_bytes < 0.4 * by_name[
        "resnet20.b1.mlpackage"].metadata.size_bytes


# ---------------------------------------------------------------- the command line


def test_cli_exports_torchscript_that_loads_with_torch_alone(random_checkpoint, image_folder,
                                                             tmp_path):
    out = tmp_path / "out"
    result = invoke(random_checkpoint, "--target", "torchscript", "--calibration-data",
                    image_folder, "--parity-size", 20, "--batch-sizes", "1,3", "--out", out)
    assert result.exit_code == 0, result.output
    assert "N=20" in result.output
    artifact = out / "resnet20.pt"
    meta = read_metadata(artifact)
    assert meta.parity.passed and meta.parity.batch_sizes_run == [1, 3]
    code = ("import json, sys, warnings, torch\n"
            "warnings.simplefilter('ignore')\n"
            "extra = {'kdpipe.json': ''}\n"
            f"m = torch.jit.load({str(artifact)!r}, _extra_files=extra)\n"
            "y = m(torch.rand(5, 3, 32, 32))\n"
            "assert 'kdpipe' not in sys.modules\n"
            "print(tuple(y.shape), json.loads(extra['kdpipe.json'])['classes'][0])\n")
    done = fresh_python(code, cwd=tmp_path)
    assert done.stdout.split() == ["(5,", "10)", "airplane"]


def test_failing_parity_leaves_no_artifact(random_checkpoint, image_folder, tmp_path,
                                           monkeypatch):
    from kdpipe.runtime.torchscript import TorchScript

    class Garbage:
        def run(self, x):
            return np.random.default_rng(0).normal(size=(len(x), 10)).astype(np.float32)

    monkeypatch.setattr(TorchScript, "load", lambda self, artifact, threads: Garbage())
    out = tmp_path / "out"
    result = invoke(random_checkpoint, "--target", "torchscript", "--calibration-data",
                    image_folder, "--parity-size", 20, "--out", out)
    assert result.exit_code != 0
    assert "parity failed" in result.output and "Traceback" not in result.output
    assert list(out.iterdir()) == []  # neither the artifact, its sidecar, nor staging files
    with pytest.raises(ExportFailed) as failed:
        quiet_export(random_checkpoint, "torchscript", None, out, dataset=synthetic_dataset(),
                     parity_size=20)
    assert failed.value.results[0].status == "failed"
    assert list(out.iterdir()) == []


def test_a_mixed_request_does_every_supported_pair_and_lists_the_rest(monkeypatch):
    monkeypatch.setattr(base, "package_available", lambda name: True)
    jobs, skipped = plan(ExportConfig(target="torchscript,onnx,executorch",
                                      quantize="none,fp16,int8"))
    done = {(j.target.name, j.quantize) for j in jobs}
    assert {("torchscript", "none"), ("onnx", "fp16"), ("executorch", "int8")} <= done
    reasons = {(t, q): why for t, q, why in skipped}
    assert "supports: none" in reasons["torchscript", "int8"]
    assert "supports: none, int8" in reasons["executorch", "fp16"]
    assert not done & set(reasons)
    with pytest.raises(KdpipeError, match="supports: none"):  # one explicit pair: still an error
        plan(ExportConfig(target="torchscript", quantize="int8"))
