"""Distillation: the frozen teacher, each method for a few steps, FitNets' two stages, the teacher
cache, heterogeneous pairs, clear errors before training, and the `kdpipe distill` command."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from kdpipe.errors import KdpipeError
from kdpipe.models import CheckpointMeta, create, load_checkpoint, read_checkpoint, save_checkpoint
from kdpipe.train import Trainer
from kdpipe.train.distill import DistillConfig, distill
from kdpipe.train.methods import (
    METHODS,
    DistillObjective,
    MethodContext,
    Outputs,
    Teacher,
    TeacherCache,
    build_plan,
    freeze_teacher,
    label,
    resolve,
)
from kdpipe.train.methods.dkd import DKDTerm
from kdpipe.train.methods.fitnets import HintObjective, hint_tap

from .conftest import SHARED_WEIGHTS, shared_file, synthetic_dataset

# The modules themselves (an attribute import could give a re-exported function of the same name).
distill_module = importlib.import_module("kdpipe.train.distill")

RESNET56 = SHARED_WEIGHTS / "resnet56-4bfd9763.th"


@pytest.fixture
def data(monkeypatch):
    """16 train / 8 test synthetic images (2 steps of 8 per epoch), handed to `distill` instead of
    loading a data set."""
    dataset = synthetic_dataset(n_train=16, n_test=8)
    monkeypatch.setattr(distill_module, "load_training_data", lambda config: dataset)
    return dataset


def save_teacher(path, model_name="resnet20", classes=CIFAR10_CLASSES, seed=0):
    torch.manual_seed(seed)
    model = create(model_name, num_classes=len(classes))
    meta = CheckpointMeta(model=model_name, model_kwargs={}, num_classes=len(classes),
                          classes=list(classes), mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD),
                          input_shape=[3, 32, 32])
    save_checkpoint(path, model, meta)
    return path


def config(tmp_path, teacher_path, **overrides) -> DistillConfig:
    values = dict(student="resnet20", teacher_checkpoint=teacher_path and str(teacher_path),
                  method="kd", epochs=1,
                  hint_epochs=1, batch_size=8, lr=0.05, warmup_epochs=0.0, device="cpu",
                  out=str(tmp_path / "run"), progress=False, threads=2)
    values.update(overrides)
    return DistillConfig(**values)


def make_teacher(model: nn.Module, **kw) -> Teacher:
    return Teacher(model, name="resnet20", mean=CIFAR10_MEAN, std=CIFAR10_STD,
                   data_mean=CIFAR10_MEAN, data_std=CIFAR10_STD, **kw)


# ----------------------------------------------------------------------------- the teacher
def test_teacher_is_frozen_and_kept_out_of_checkpoint_and_optimizer():
    teacher = make_teacher(create("resnet20"))
    student = create("resnet20")
    cfg = DistillConfig(method="kd+rkd")
    plan = build_plan(cfg.method, MethodContext(student, teacher, cfg, (3, 32, 32)))
    objective = DistillObjective(student, teacher, plan.terms, plan.ce_weight)
    objective.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert all(k.startswith("student.") for k in objective.state_dict())
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert trainable == {id(p) for p in student.parameters()}
    objective.to(memory_format=torch.channels_last)  # the teacher follows the objective
    assert teacher.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = objective(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert set(out.parts) == {"ce", "kd", "rkd_distance", "rkd_angle"}
    out.loss.backward()
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.slow
def test_compiled_objective_without_terms_still_trains():
    # A scratch cell of a sweep with compile = true once raised "element 0 of tensors does not
    # require grad": torch.compile turned 1.0 * CE into an alias of its detached log copy.
    torch.manual_seed(0)
    objective = DistillObjective(create("plaincnn_student"), None, [], ce_weight=1.0).train()
    out = torch.compile(objective)(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert out.loss.requires_grad and out.loss.grad_fn is not None


def test_freeze_teacher_and_no_grad_forward():
    model = freeze_teacher(create("resnet20").train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = make_teacher(model)(torch.randn(2, 3, 32, 32), ("embedding",))
    assert not out.logits.requires_grad and out.logits.dtype == torch.float32
    assert out.features["embedding"].shape == (2, 64)


def test_teacher_runs_in_bf16_only_where_the_run_does(monkeypatch):
    import kdpipe.train.methods.teacher as teacher_module

    torch.manual_seed(0)
    model = freeze_teacher(create("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    for native in (False, True):
        monkeypatch.setattr(teacher_module, "uses_bf16", lambda amp, device, n=native: amp and n)
        out = make_teacher(model)(x, ("embedding",))
        assert out.logits.dtype == out.features["embedding"].dtype == torch.float32
        if native:  # bf16 logits: close to fp32 (bf16 keeps ~3 digits), not equal
            assert not torch.equal(out.logits, reference)
            error = (out.logits - reference).abs().max() / reference.abs().max()
            assert error < 0.05  # 0.3-0.9% over ten random teachers and inputs
        else:
            torch.testing.assert_close(out.logits, reference)
        assert torch.equal(make_teacher(model, amp=False)(x).logits, reference)


class Recorder(nn.Module):
    feature_layers = {}

    def forward(self, x):
        self.seen = x
        return x.mean((2, 3))


def test_teacher_gets_its_own_normalization():
    raw = torch.rand(2, 3, 4, 4)
    student_mean, student_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    teacher_mean, teacher_std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)

    def norm(x, mean, std):
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    recorder = Recorder()
    teacher = Teacher(recorder, name="recorder", mean=teacher_mean, std=teacher_std,
                      data_mean=student_mean, data_std=student_std)
    teacher(norm(raw, student_mean, student_std))
    torch.testing.assert_close(recorder.seen, norm(raw, teacher_mean, teacher_std))


# ----------------------------------------------------------------------------- methods
def test_registry_and_combinations():
    assert {"kd", "fitnets", "rkd", "scratch"} <= set(METHODS.names())
    with pytest.raises(KdpipeError, match="available: .*fitnets.*kd"):
        resolve("hinton")
    with pytest.raises(KdpipeError, match="twice"):
        resolve("kd+kd")
    teacher = make_teacher(create("resnet20"))
    cfg = DistillConfig(method="kd+rkd", alpha=0.7)
    plan = build_plan(cfg.method, MethodContext(create("resnet20"), teacher, cfg, (3, 32, 32)))
    assert plan.ce_weight == pytest.approx(0.3)  # the label term once, at KD's 1 - alpha
    assert {t.name: t.weight for t in plan.terms} == {
        "kd": 0.7, "rkd_distance": 25.0, "rkd_angle": 50.0}
    with pytest.raises(KdpipeError, match="kd"):  # fitnets already ends with KD
        build_plan("fitnets+kd", MethodContext(create("resnet20"), teacher, cfg, (3, 32, 32)))
    assert label("fitnets", DistillConfig(hint_layer="final")) == "Mimicking final layer"


@pytest.mark.parametrize("model, middle, final", [
    ("resnet20", "stage2", "stage3"),
    ("plaincnn_student", "stage2", "stage3"),
    ("mobilenetv2_x0_5", "stage2", "stage4"),
])
def test_hint_layers_map_to_stage_taps(model, middle, final):
    net = create(model)
    assert (hint_tap(net, "middle"), hint_tap(net, "final")) == (middle, final)


def test_fitnets_stage1_updates_only_the_guided_part_and_regressor(tmp_path):
    from kdpipe.train.losses import HintRegressor

    student = create("resnet20")
    teacher = make_teacher(create("resnet20"))
    regressor = HintRegressor(32, 32, (16, 16), (16, 16))
    objective = HintObjective(student, teacher, regressor, "stage2", "stage2", (3, 32, 32))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reg_before = {k: v.clone() for k, v in regressor.state_dict().items()}
    cfg = config(tmp_path, "unused", batch_size=16)
    trainer = Trainer(cfg, objective, synthetic_dataset(n_train=32, n_test=8))
    trainer.setup()
    trainer.fit()
    after = student.state_dict()
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        guided = key.startswith(("conv1", "bn1", "layer1", "layer2"))
        if key.endswith("num_batches_tracked"):
            continue
        # Weights and BN statistics up to the guided layer move; everything after it stays.
        assert moved == guided, key
    assert any(not torch.equal(v, regressor.state_dict()[k]) for k, v in reg_before.items())
    _, raw = read_checkpoint(tmp_path / "run" / "last.pt")
    assert any(k.startswith("regressor.") for k in raw["trainer"]["objective_extras"])


# ----------------------------------------------------------------------------- distill runs
@pytest.mark.parametrize("method, hint_layer", [
    ("kd", "middle"), ("fitnets", "middle"), ("fitnets", "final"), ("rkd", "middle"),
    ("kd+rkd", "middle"),
])
def test_few_steps_of_each_method_with_the_pretrained_resnet56(tmp_path, data, method, hint_layer,
                                                              monkeypatch, capsys):
    teacher = shared_file(RESNET56)
    cfg = config(tmp_path, teacher, method=method, hint_layer=hint_layer)
    summary = distill(cfg)
    assert summary["method"] == method and summary["teacher"] == "resnet56"
    assert summary["model"] == "resnet20" and 0 <= summary["teacher_top1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(rows[-1]["train_loss"]))
    assert load_checkpoint(tmp_path / "run" / "model.pt").kdpipe_meta.model == "resnet20"
    if method == "fitnets":
        assert summary["stages"]["stage1"]["epochs"] == 1
        shown = capsys.readouterr().err  # the hint stage's chance-level top-1 is explained
        assert "top-1 stays near chance" in shown and "main stage (fitnets)" in shown
        # --resume after the end: the finished hint stage is not trained again.
        stage1 = (tmp_path / "run" / "stage1" / "metrics.jsonl").read_text()
        calls = []
        monkeypatch.setattr(Trainer, "fit", lambda self: calls.append(self.config.out) or {})
        distill(cfg, resume=True)
        assert calls == [cfg.out]
        assert (tmp_path / "run" / "stage1" / "metrics.jsonl").read_text() == stage1


@pytest.mark.parametrize("student", ["plaincnn_student", "mobilenetv2_x0_5"])
def test_heterogeneous_pairs(tmp_path, data, student):
    """Other channels, spatial sizes and embedding widths: the regressor and RKD handle them."""
    teacher = shared_file(RESNET56)
    summary = distill(config(tmp_path, teacher, student=student, method="fitnets+rkd",
                             hint_layer="final"))
    assert summary["model"] == student


# ----------------------------------------------------------------------------- errors
def refuse_training(monkeypatch):
    monkeypatch.setattr(Trainer, "setup", lambda self: pytest.fail("training started"))


def test_teacher_with_other_classes_is_refused_before_training(tmp_path, data, monkeypatch):
    refuse_training(monkeypatch)
    classes = [f"c{i}" for i in range(10)]
    teacher = save_teacher(tmp_path / "teacher.pt", classes=classes)
    with pytest.raises(KdpipeError, match="classes"):
        distill(config(tmp_path, teacher))
    assert not (tmp_path / "run").exists()


def test_wrong_teacher_name_and_missing_teacher_are_clear(tmp_path, data, monkeypatch):
    refuse_training(monkeypatch)
    teacher = save_teacher(tmp_path / "teacher.pt")
    with pytest.raises(KdpipeError, match="--teacher resnet110 does not match .*resnet20"):
        distill(config(tmp_path, teacher, teacher="resnet110"))
    with pytest.raises(KdpipeError, match="needs a teacher"):
        distill(config(tmp_path, None))
    with pytest.raises(KdpipeError, match="unknown method 'hinton'"):
        distill(config(tmp_path, teacher, method="hinton"))


def test_scratch_needs_no_teacher(tmp_path, data):
    summary = distill(config(tmp_path, None, method="scratch"))
    assert summary["method"] == "scratch" and "teacher" not in summary
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "train_ce" in rows and "train_kd" not in rows


# ----------------------------------------------------------------------------- teacher cache
@pytest.fixture
def forwards(monkeypatch) -> list[int]:
    """Grows by one for every teacher forward that is computed, not served from a cache."""
    calls: list[int] = []
    original = Teacher._forward
    monkeypatch.setattr(Teacher, "_forward",
                        lambda self, *a: calls.append(1) or original(self, *a))
    return calls


def test_teacher_cache_is_shared_and_changes_nothing(tmp_path, data, forwards):
    teacher = save_teacher(tmp_path / "teacher.pt")
    plain = distill(config(tmp_path / "plain", teacher, method="kd+rkd"))
    n_batches = len(forwards)
    cache = tmp_path / "cache"
    distill(config(tmp_path / "a", teacher, method="kd+rkd", teacher_cache=str(cache)))
    assert len(forwards) == 2 * n_batches  # first run: computed and stored
    cached = distill(config(tmp_path / "c", teacher, method="kd", alpha=0.5,
                            teacher_cache=str(cache)))
    assert len(forwards) == 2 * n_batches  # later runs with the same seed: all from the cache
    assert cached["teacher_top1"] == plain["teacher_top1"]
    a = load_checkpoint(tmp_path / "plain" / "run" / "model.pt").state_dict()
    b = load_checkpoint(tmp_path / "a" / "run" / "model.pt").state_dict()
    for key in a:  # outputs from the cache are those the teacher gives
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_kd_run_fills_the_cache_for_a_later_rkd_run(tmp_path, data, forwards):
    teacher = save_teacher(tmp_path / "teacher.pt")
    cache = str(tmp_path / "cache")
    distill(config(tmp_path / "kd", teacher, method="kd", teacher_cache=cache))
    after_kd = len(forwards)  # KD asks only for logits; the embedding is stored all the same
    distill(config(tmp_path / "rkd", teacher, method="rkd", teacher_cache=cache))
    assert after_kd > 0 and len(forwards) == after_kd


def test_teacher_cache_keys_on_batch_content(tmp_path):
    cache = TeacherCache(tmp_path, "ab" * 32)
    x = torch.randn(4, 3, 8, 8)
    assert cache.key(x) == cache.key(x.clone().contiguous(memory_format=torch.channels_last))
    assert cache.key(x) != cache.key(x + 1e-6)
    assert cache.load(cache.key(x), (), torch.device("cpu")) is None


# ----------------------------------------------------------------------------- CLI
def test_cli_help_states_the_alpha_convention():
    result = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "(1 - alpha) * CE(labels, student) + alpha * T^2 * KL" in result.output
    assert "--student" in result.output and "--teacher-checkpoint" in result.output


def test_cli_distill_end_to_end(tmp_path):
    from PIL import Image

    dataset = synthetic_dataset(n_train=16, n_test=8)
    for split, images, labels in (("train", dataset.train_images, dataset.train_labels),
                                  ("test", dataset.test_images, dataset.test_labels)):
        for i, (img, y) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "images" / split / dataset.classes[int(y)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    teacher = save_teacher(tmp_path / "teacher.pt")
    args = ["distill", "--data", tmp_path / "images", "--teacher-checkpoint", teacher,
            "--student", "resnet20", "--method", "kd", "--temperature", "4", "--alpha", "0.9",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "--out", tmp_path / "run"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["method"], summary["model"], summary["teacher"]) == ("kd", "resnet20",
                                                                        "resnet20")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (saved["temperature"], saved["alpha"], saved["student"]) == (4.0, 0.9, "resnet20")


# ----------------------------------------------------------------------------- at, dkd, dist, lskd
NEW_METHODS = ["dkd", "dist", "lskd", "at"]


# Every registered method and one sum: a new method gets this test by its registration alone.
@pytest.mark.parametrize("method", [*METHODS.names(), "dkd+rkd"])
def test_one_tiny_distill_of_every_method(tmp_path, data, method):
    teacher = save_teacher(tmp_path / "teacher.pt", seed=1)
    summary = distill(config(tmp_path, teacher, method=method, dkd_warmup_epochs=0.5))
    assert summary["method"] == method and summary["model"] == "resnet20"
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    terms = [k for k in row if k.startswith("train_") and k not in ("train_loss", "train_top1",
                                                                    "train_ce")]
    assert row["train_ce"] > 0 and all(torch.isfinite(torch.tensor(row[k])) for k in terms)
    if any(m.needs_teacher for m in resolve(method)):
        assert terms and all(row[k] > 0 for k in terms), terms  # every loss term is at work
        assert summary["teacher_params"] > 0 and summary["teacher_macs"] > 0
    for part in method.split("+"):
        if part in NEW_METHODS:
            key = "train_rkd_angle" if part == "rkd" else f"train_{part}"
            assert torch.isfinite(torch.tensor(row[key])), key
    if method.split("+")[0] in NEW_METHODS:
        assert row[f"train_{method.split('+')[0]}"] > 0
    assert load_checkpoint(tmp_path / "run" / "model.pt").kdpipe_meta.model == "resnet20"


def test_new_methods_are_registered_with_their_paper_defaults():
    assert set(NEW_METHODS) <= set(METHODS.names())
    teacher = make_teacher(create("resnet20"))
    cfg = DistillConfig()

    def plan(method, **kw):
        c = DistillConfig(method=method, **kw)
        return build_plan(method, MethodContext(create("resnet20"), teacher, c, (3, 32, 32)))

    dkd = plan("dkd").terms[0]
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (1.0, 8.0, 4.0, 20.0)
    dist = plan("dist").terms[0]
    assert (dist.beta, dist.gamma, dist.temperature) == (2.0, 2.0, 4.0)
    lskd = plan("lskd", temperature=2.0)
    assert (lskd.ce_weight, lskd.terms[0].weight, lskd.terms[0].temperature) == (0.1, 9.0, 2.0)
    at = plan("at").terms[0]
    assert at.weight == 1000.0 and at.student_taps == at.teacher_taps == (
        "stage1", "stage2", "stage3")  # the outputs of the three residual groups
    composed = plan("dkd+rkd")
    assert composed.ce_weight == 1.0
    assert [t.name for t in composed.terms] == ["dkd", "rkd_distance", "rkd_angle"]
    assert label("dkd", cfg) == "DKD (alpha=1, beta=8, T=4)"
    assert label("dist", cfg) == "DIST (beta=2, gamma=2, T=4)"
    assert label("lskd", DistillConfig(temperature=2.0)) == "KD with logit standardization (T=2)"
    assert label("at", cfg) == "Attention transfer (beta=1000)"
    with pytest.raises(KdpipeError, match="dkd_warmup_epochs"):
        plan("dkd", dkd_warmup_epochs=-1.0)


def test_at_pairs_stages_of_other_sizes_and_refuses_a_model_without_stages():
    """MobileNetV2's stages are 16x16 where the ResNet's stage1 is 32x32: the student's maps are
    resized to the teacher's; a teacher without stage taps is a clear error."""
    student = create("mobilenetv2_x0_5")
    teacher = make_teacher(create("resnet20"))
    cfg = DistillConfig(method="at")
    plan = build_plan("at", MethodContext(student, teacher, cfg, (3, 32, 32)))
    objective = DistillObjective(student, teacher, plan.terms, plan.ce_weight)
    out = objective(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(out.parts["at"]) and out.parts["at"] > 0
    out.loss.backward()
    with pytest.raises(KdpipeError, match="stage taps"):
        build_plan("at", MethodContext(create("resnet20"), make_teacher(Recorder()), cfg,
                                       (3, 32, 32)))


def test_dkd_weight_ramps_from_zero_to_one_over_the_warmup():
    term = DKDTerm(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=2.0)
    g = torch.Generator().manual_seed(0)
    student = Outputs(torch.randn(6, 10, generator=g))
    teacher = Outputs(torch.randn(6, 10, generator=g))
    labels = torch.arange(6)
    values = []
    for epochs in (0.0, 1.0, 2.0, 3.5):
        term.start_step(epochs)
        values.append(term(student, teacher, labels).item())
    full = values[2]
    assert full > 0 and values[0] == 0.0  # the first step: no DKD at all
    assert values[1] == pytest.approx(0.5 * full) and values[3] == pytest.approx(full)
    term.warmup_epochs = 0.0  # no warm-up: full weight from the first step
    term.start_step(0.0)
    assert term(student, teacher, labels).item() == pytest.approx(full)
    assert "epochs" not in term.state_dict()  # set before every step, so not in the checkpoint


def test_trainer_tells_the_objective_its_position_in_epochs_before_each_step(tmp_path, data,
                                                                            monkeypatch):
    ramps = []
    original = DKDTerm.forward

    def recording(self, student, teacher, labels):
        ramps.append(self.ramp().item())
        return original(self, student, teacher, labels)

    monkeypatch.setattr(DKDTerm, "forward", recording)
    teacher = save_teacher(tmp_path / "teacher.pt")
    # 16 images in batches of 8: two steps per epoch, at 0, 0.5, 1 and 1.5 epochs.
    distill(config(tmp_path, teacher, method="dkd", epochs=2, dkd_warmup_epochs=1.25))
    assert ramps == pytest.approx([0.0, 0.4, 0.8, 1.0])


def test_a_run_begun_before_the_new_options_existed_resumes(tmp_path, data):
    teacher = save_teacher(tmp_path / "teacher.pt")
    cfg = config(tmp_path, teacher, method="kd", epochs=1)
    distill(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("at_weight", "dkd_alpha", "dkd_beta", "dkd_warmup_epochs", "dist_beta",
                "dist_gamma", "lskd_weight", "lskd_ce_weight"):
        del saved["config"][key]  # as a config.json written by an older kdpipe
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    distill(cfg, resume=True)  # the added options are at their defaults: nothing changed
    with pytest.raises(KdpipeError, match="would change dkd_beta"):
        (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
        distill(dataclasses.replace(cfg, dkd_beta=2.0), resume=True)


def test_cli_help_shows_the_new_methods_options():
    result = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--dkd-alpha", "--dkd-beta", "--dkd-warmup-epochs", "--dist-beta",
                 "--dist-gamma", "--lskd-weight", "--lskd-ce-weight", "--at-weight"):
        assert flag in result.output, flag
    text = " ".join(result.output.replace("│", " ").split())  # help lines wrap in a box
    assert "lskd (its paper uses 2: pass --temperature 2)" in text
