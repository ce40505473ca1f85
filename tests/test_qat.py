"""Quantization-aware distillation: `--qat` refusals, the fake-quantized student (taps, observers,
resume), a QAT checkpoint that loads as FP32 and carries its ranges, and INT8 exports that use
the learned ranges instead of calibrating (ONNX QDQ scales, ExecuTorch through prepare_qat_pt2e).

torchao's `prepare_qat_pt2e` costs ~10 s per student on two busy cores whatever its size (it
traces its conv-BN patterns each call), so the QAT graphs are built once per module: a
synthetic one for the unit tests, and one end-to-end run on a real JPEG subset from the shared
pretrained ResNet20 (accurate enough for the int8 parity gate), whose checkpoint the export
tests share.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD
from kdpipe.errors import KdpipeError
from kdpipe.export import export_checkpoint, read_metadata
from kdpipe.export.base import package_available
from kdpipe.models import FeatureTaps, create, feature_layers, load_checkpoint, read_checkpoint
from kdpipe.models.checkpoint import QAT_KEY, learned_quantization
from kdpipe.train import qat as qat_module
from kdpipe.train.config import DistillConfig, TrainConfig
from kdpipe.train.trainer import Trainer
from kdpipe.train.trainer_objective import CrossEntropyObjective

from .conftest import SHARED_TARBALL, SHARED_WEIGHTS, synthetic_dataset
from .test_export import real_subset

has_qat = pytest.mark.skipif(
    not (package_available("torchao") and package_available("executorch")),
    reason="--qat needs torchao and executorch (kdpipe[executorch])")
STUDENT = SHARED_WEIGHTS / "resnet20-12fca82f.th"
TEACHER = SHARED_WEIGHTS / "resnet56-4bfd9763.th"


# ----------------------------------------------------------------------------- refusals
def test_qat_without_init_checkpoint_is_refused_in_one_line(tmp_path):
    with pytest.raises(KdpipeError, match="--qat needs --init-checkpoint"):
        DistillConfig(qat=True)
    result = CliRunner().invoke(app, ["distill", "--qat", "--teacher-checkpoint", "t.pt",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--qat needs --init-checkpoint PATH" in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_distill_help_names_the_qat_options():
    result = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())  # help lines wrap in a box
    assert "--qat" in text and "--init-checkpoint" in text and "--lr 0.0001" in text
    assert "--dkd-warmup-epochs 0" in text  # a loss warm-up would mute DKD when fine-tuning


def test_qat_without_its_libraries_is_refused(monkeypatch):
    monkeypatch.setattr(qat_module, "_installed", lambda name: name != "executorch")
    with pytest.raises(KdpipeError, match=r"--qat needs executorch .*kdpipe\[executorch\]"):
        qat_module.require_qat_libraries()


# ----------------------------------------------------------------------------- the QAT student
@pytest.fixture(scope="module")
def qat_student():
    """A fake-quantized random-init ResNet20 (built once: see the module docstring)."""
    if not (package_available("torchao") and package_available("executorch")):
        pytest.skip("--qat needs torchao and executorch (kdpipe[executorch])")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qat_module.QatStudent(create("resnet20"), CIFAR10_MEAN, CIFAR10_STD, (3, 32, 32))


def ranges(student) -> list[float]:
    return [float(m.activation_post_process.min_val)
            for _, m in student._activation_fake_quants()]


def test_qat_student_has_the_student_taps_and_moves_ranges_only_in_training(qat_student):
    student = copy.deepcopy(qat_student)
    x = torch.randn(4, 3, 32, 32)
    eager = FeatureTaps(student.student, feature_layers(student.student))(x)[1]
    student.train()
    logits, features = FeatureTaps(student, feature_layers(student))(x)
    assert logits.shape == (4, 10)
    assert {k: v.shape for k, v in features.items()} == {k: v.shape for k, v in eager.items()}
    before = ranges(student)
    with torch.no_grad():
        student.eval()
        student(x + 3)
        assert ranges(student) == before  # evaluation never moves a learned range
        student.train()
        student(x + 3)
    assert ranges(student) != before
    # gradients reach the FP32 student's own parameters, which the graph shares
    student.student.zero_grad()
    student(x).sum().backward()
    assert student.student.conv1.weight.grad is not None


def test_learned_ranges_find_their_tensors_in_the_fp32_student(qat_student):
    student = copy.deepcopy(qat_student).train()
    with torch.no_grad():
        student(torch.randn(8, 3, 32, 32))
    learned = student.learned()
    assert len(learned.activations) >= 20 and learned.probe.shape == (2, 3, 32, 32)
    # The fingerprints are of FP32 activations: the eager student's own outputs match them.
    eager = student.student.eval()
    with torch.no_grad():
        taps = FeatureTaps(eager, feature_layers(eager))(
            (learned.probe - student.mean) / student.std)[1]
    matched = learned.match(taps)
    assert {"stage1", "stage2", "stage3"} <= set(matched)


def test_resume_of_a_qat_run_matches_an_uninterrupted_one(tmp_path, qat_student):
    data = synthetic_dataset(n_train=32, n_test=8)

    def fit(folder, student, resume=False, stop_at=None):
        config = TrainConfig(model="resnet20", epochs=2, batch_size=16, lr=0.01,
                             warmup_epochs=0.0, device="cpu", out=str(folder), progress=False,
                             threads=2, amp=False)
        objective = CrossEntropyObjective(student)
        if stop_at is not None:  # Ctrl-C at the n-th step (epoch 2, step 1: mid-run)
            calls = iter(range(1, 100))
            forward = objective.forward

            def interrupted(images, labels):
                if next(calls) == stop_at:
                    raise KeyboardInterrupt
                return forward(images, labels)

            objective.forward = interrupted
        torch.manual_seed(0)
        trainer = Trainer(config, objective, data, resume=resume)
        trainer.setup()
        return trainer.fit()

    fit(tmp_path / "a", copy.deepcopy(qat_student))
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", copy.deepcopy(qat_student), stop_at=3)
    _, raw = read_checkpoint(tmp_path / "b" / "last.pt")
    assert QAT_KEY in raw and raw["trainer"]["epoch"] == 1
    fit(tmp_path / "b", copy.deepcopy(qat_student), resume=True)  # a fresh graph, restored
    a, b = (read_checkpoint(tmp_path / run / "model.pt")[1] for run in "ab")
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0,
                                   atol=1e-6, msg=key)
    scales = [[r["scale"] for r in raw[QAT_KEY]["activations"]] for raw in (a, b)]
    assert scales[0] == scales[1]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """`kdpipe distill --qat` (kd+at) for 1 epoch from the pretrained ResNet20, on a real subset."""
    if not (package_available("torchao") and package_available("executorch")):
        pytest.skip("--qat needs torchao and executorch (kdpipe[executorch])")
    if not (STUDENT.exists() and TEACHER.exists() and SHARED_TARBALL.exists()):
        pytest.skip("../shared weights and data are absent")
    distill_module = importlib.import_module("kdpipe.train.distill")
    # 5 steps: the activation ranges start at the first batch's min/max and move 1% per step,
    # so a shorter run keeps the range of a single small batch, too narrow for the test images.
    data = real_subset(train_per_class=8, test_per_class=20)
    out = tmp_path_factory.mktemp("qat") / "run"
    config = DistillConfig(student="resnet20", teacher_checkpoint=str(TEACHER), method="kd+at",
                           epochs=1, batch_size=16, lr=0.001, warmup_epochs=0.0, device="cpu",
                           out=str(out), progress=False, threads=2, qat=True,
                           init_checkpoint=str(STUDENT))
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
        warnings.simplefilter("ignore")
        patch.setattr(distill_module, "load_training_data", lambda config: data)
        summary = distill_module.distill(config)
    return out, data, summary


@has_qat
def test_a_qat_checkpoint_loads_as_fp32_and_carries_its_ranges(qat_run):
    out, _, summary = qat_run
    model = load_checkpoint(out / "model.pt")
    assert type(model).__name__ == "CifarResNet"
    assert set(model.state_dict()) == set(create("resnet20").state_dict())
    init = load_checkpoint(STUDENT)
    # BN statistics are frozen for the QAT epochs: exactly those of the init checkpoint.
    for name in ("bn1.running_mean", "layer3.2.bn2.running_var"):
        torch.testing.assert_close(model.state_dict()[name], init.state_dict()[name], rtol=0,
                                   atol=0)
    learned = learned_quantization(model)
    assert learned is not None and len(learned.activations) >= 20
    assert all(np.isfinite(a.scale) and a.scale > 0 for a in learned.activations)
    assert summary["qat"]["name"] == qat_module.SCHEME["name"]
    assert json.loads((out / "config.json").read_text())["config"]["qat"] is True
    assert learned_quantization(load_checkpoint(STUDENT)) is None


@has_qat
def test_onnx_int8_of_a_qat_checkpoint_uses_the_learned_ranges(qat_run, tmp_path):
    import onnx
    from onnx import numpy_helper

    out, data, _ = qat_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = export_checkpoint(out / "model.pt", "onnx", "none,int8", tmp_path,
                                    dataset=data, calibration_size=40, parity_size=200)
    by_name = {r.path.name: r for r in results}
    assert all(r.status == "ok" for r in results)
    fp32 = read_metadata(by_name["resnet20.onnx"].path)
    assert fp32.quantization == "fp32" and fp32.calibration is None
    meta = read_metadata(by_name["resnet20.int8.onnx"].path)
    assert meta.parity.passed and meta.calibration["method"] == "learned (QAT)"
    assert meta.details["int8_scheme"]["calibration"].startswith("learned (QAT)")
    assert meta.details["learned_quantization"]["learned"] >= 30
    # The QDQ scale and zero point of the first convolution's input are the learned ones.
    learned = learned_quantization(load_checkpoint(out / "model.pt"))
    image_range = next(a for a in learned.activations if a.fingerprints[0].shape == (2, 3))
    proto = onnx.load(str(by_name["resnet20.int8.onnx"].path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    conv_input = next(n for n in proto.graph.node if n.op_type == "Conv").input[0]
    dq = next(n for n in proto.graph.node if conv_input in n.output)
    assert dq.op_type == "DequantizeLinear"
    assert inits[dq.input[1]] == np.float32(image_range.scale)
    assert int(inits[dq.input[2]]) == image_range.zero_point + 128  # int8 grid -> uint8


@has_qat
@pytest.mark.skipif(not package_available("executorch"), reason="executorch is not installed")
@pytest.mark.slow
def test_executorch_int8_of_a_qat_checkpoint_goes_through_prepare_qat(qat_run, tmp_path):
    out, data, _ = qat_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = export_checkpoint(out / "model.pt", "executorch", "int8", tmp_path,
                                    dataset=data, calibration_size=40, parity_size=200,
                                    batch_sizes="1,8")
    assert [r.status for r in results] == ["ok"]
    meta = read_metadata(results[0].path)
    assert meta.parity.passed and meta.calibration["method"] == "learned (QAT)"
    assert "prepare_qat_pt2e" in meta.quantization_detail
    facts = meta.details["learned_quantization"]
    assert facts["learned"] >= 20 and len(facts["calibrated"]) <= 3  # the folded normalization


def test_learned_ranges_keep_relu6_in_the_int8_onnx(tmp_path):
    """A learned range is the fake quantizer's: before a ReLU6 that XNNPACK's quantizer does not
    fuse (MobileNetV2), it spans the conv's negatives. ONNX Runtime must not drop the Clip and
    leave the clamping to that range (a QAT MobileNetV2 fell from 78% to 19% top-1 that way)."""
    import onnx
    import onnxruntime as ort

    from kdpipe.export.base import Calibration
    from kdpipe.export.onnx import INPUT_NAME, _export_fp32, _to_int8

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU6(),
                                torch.nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # conv outputs far outside [0, 6] on both sides
    fp32 = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export_fp32(model, torch.rand(2, 3, 8, 8), fp32)
    images = np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)
    proto = onnx.load(str(fp32))
    clip = next(n for n in proto.graph.node if n.op_type == "Clip")
    with torch.no_grad():
        low, high = (float(f(model[0](torch.from_numpy(images)))) for f in (torch.min, torch.max))
    scale = (high - low) / 255
    learned = [{"scale": np.array(scale, dtype=np.float32),
                "zero_point": np.array(round(-low / scale), dtype=np.uint8)}]
    quantized = _to_int8(fp32, Calibration(images=images, data="random"),
                         {clip.input[0]: learned, clip.output[0]: learned})
    assert any(n.op_type == "Clip" for n in quantized.graph.node)
    session = ort.InferenceSession(quantized.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    error = np.abs(session.run(None, {INPUT_NAME: images})[0] - reference).max()
    assert error < 0.1 * np.abs(reference).max(), error
