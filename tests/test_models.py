"""kdpipe.models: every registered model, feature taps, complexity, and the checkpoint format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.models import (
    MODELS,
    CheckpointMeta,
    FeatureTaps,
    available,
    checkpoint_meta,
    count_macs,
    count_params,
    create,
    feature_layers,
    feature_shapes,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    stage_names,
)
from kdpipe.models.checkpoint import file_sha256
from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
ALL_MODELS = available()

# He et al. 2016, table 6 (and the pytorch_resnet_cifar10 README), and the exact counts.
PAPER_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6,
                "resnet110": 1.7e6}
EXACT_PARAMS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586,
                "resnet56": 853_018, "resnet110": 1_727_962, "plaincnn_teacher": 1_148_874,
                "plaincnn_student": 72_954, "mobilenetv2": 2_236_682,
                "mobilenetv2_x0_5": 700_490}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 1-2 images gain nothing from a second thread, and on a shared 2-core machine
    OpenMP threads spin-waiting for a busy core triple the wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def meta_for(name: str, **kwargs: object) -> CheckpointMeta:
    return CheckpointMeta(model=name, model_kwargs=dict(kwargs), num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=(0.49, 0.48, 0.45),
                          std=(0.25, 0.24, 0.26), input_shape=(3, 32, 32),
                          metrics={"top1": 12.5}, config={"lr": 0.1, "epochs": 2})


def trained_bn(model: nn.Module) -> nn.Module:
    """Move BN running statistics off their defaults, so a round trip must carry them."""
    with torch.no_grad():
        model.train()(images(8) * 3 + 1)
    return model.eval()


# ---------------------------------------------------------------- every registered model
def test_registry_lists_all_families() -> None:
    assert set(EXACT_PARAMS) <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_and_backward(name: str) -> None:
    model = create(name)
    logits = model(images())
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_taps(name: str) -> None:
    model = create(name).eval()
    x = images()
    plain = model(x)
    declared = feature_layers(model)
    stages = stage_names(model)
    assert stages == [f"stage{k}" for k in range(1, len(stages) + 1)] and len(stages) >= 3
    assert set(declared) == {*stages, "embedding"}
    with FeatureTaps(model, declared) as taps:
        logits, feats = taps(x)
    assert torch.equal(logits, plain)  # taps leave forward alone
    assert set(feats) == set(declared)
    sizes = [feats[s].shape[-1] for s in stages]
    assert sizes == [32 // 2**k for k in range(len(stages))]
    assert all(feats[s].dim() == 4 and feats[s].shape[0] == 2 for s in stages)
    embedding = feats["embedding"]
    assert embedding.dim() == 2 and embedding.shape[0] == 2
    # The embedding is the pooled last stage, the input of the linear head.
    torch.testing.assert_close(embedding, feats[stages[-1]].mean((2, 3)))
    shapes = feature_shapes(model)
    assert shapes == {k: (1, *v.shape[1:]) for k, v in feats.items()}
    assert not any(m._forward_hooks for m in model.modules())  # removed on exit


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_trace(name: str) -> None:
    model = create(name).eval()
    x = images(1)
    # check_trace re-traces and diffs the graphs (20 s for ResNet110 on 2 cores); comparing the
    # outputs checks the same thing here, and the unoptimized executor skips profiling runs.
    traced = torch.jit.trace(model, x, check_trace=False)
    with torch.jit.optimized_execution(False):
        torch.testing.assert_close(traced(x), model(x))


def test_torch_export_option_a_shortcut() -> None:
    model = create("resnet20").eval()
    exported = torch.export.export(model, (images(),))
    torch.testing.assert_close(exported.module()(images()), model(images()))


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_counts(name: str) -> None:
    params = count_params(create(name))
    assert params == EXACT_PARAMS[name]
    if name in PAPER_PARAMS:
        assert abs(params - PAPER_PARAMS[name]) <= 0.02 * PAPER_PARAMS[name]


def test_plain_cnn_sizes_within_the_stated_bounds() -> None:
    assert 0.9e6 <= count_params(create("plaincnn_teacher")) <= 1.2e6
    assert count_params(create("plaincnn_student")) <= 0.1e6
    assert 2.1e6 <= count_params(create("mobilenetv2")) <= 2.3e6


def test_macs_resnet20() -> None:
    assert abs(count_macs(create("resnet20")) - 40.8e6) <= 0.05 * 40.8e6


def test_macs_count_conv_and_linear_exactly() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    conv = 8 * 32 * 32 * 3 * 3 * 3
    linear = 8 * 32 * 32 * 10
    assert count_macs(model) == conv + linear
    assert count_macs(model, (4, 3, 32, 32)) == 4 * (conv + linear)


# ---------------------------------------------------------------- ResNet layout
def zoo_key_order(n: int) -> list[str]:
    """The pytorch_resnet_cifar10 state-dict keys of a ResNet-(6n+2), in the paper's order."""
    bn = ["weight", "bias", "running_mean", "running_var"]
    keys = ["conv1.weight", *(f"bn1.{p}" for p in bn)]
    for stage in (1, 2, 3):
        for i in range(n):
            for j in (1, 2):
                keys += [f"layer{stage}.{i}.conv{j}.weight",
                         *(f"layer{stage}.{i}.bn{j}.{p}" for p in bn)]
    return keys + ["linear.weight", "linear.bias"]


def test_resnet20_state_dict_order_matches_the_zoo() -> None:
    keys = [k for k in create("resnet20").state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == zoo_key_order(3)
    zoo_file = WEIGHTS / "resnet20-12fca82f.th"
    if zoo_file.exists():
        zoo = torch.load(zoo_file, map_location="cpu", weights_only=True)["state_dict"]
        assert keys == [k.removeprefix("module.") for k in zoo]


def test_option_a_shortcut_pads_new_channels_evenly() -> None:
    block = create("resnet20").layer2[0]
    x = torch.randn(1, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


# ---------------------------------------------------------------- feature taps
def test_feature_taps_on_a_foreign_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10))
    assert feature_layers(model) == {} and stage_names(model) == []
    logits, feats = FeatureTaps(model, {"conv": "0", "pooled": "3"})(images())
    assert feats["conv"].shape == (2, 4, 30, 30) and feats["pooled"].shape == (2, 4)
    assert not any(m._forward_hooks for m in model.modules())  # one-shot call cleans up
    with pytest.raises(KdpipeError, match="declares no feature taps"):
        FeatureTaps(model)


def test_feature_taps_unknown_path_lists_modules() -> None:
    with pytest.raises(KdpipeError, match="layer3") as info:
        FeatureTaps(create("resnet20"), {"stage4": "layer4"})
    assert "conv1" in str(info.value)


def test_feature_taps_gradients_flow_to_the_student() -> None:
    model = create("plaincnn_student")
    with FeatureTaps(model) as taps:
        _, feats = taps(images())
        feats["stage2"].pow(2).mean().backward()
    assert model.stage1[0][0].weight.grad is not None
    assert model.linear.weight.grad is None  # the head is after the tap


def test_feature_taps_through_ddp(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = create("resnet20")
        ddp = nn.parallel.DistributedDataParallel(model)
        with FeatureTaps(ddp) as taps:
            logits, feats = taps(images())
        assert logits.shape == (2, 10) and feats["stage3"].shape == (2, 64, 8, 8)
        assert feature_layers(ddp) == feature_layers(model)
        save_checkpoint(tmp_path / "ddp.pt", ddp, meta_for("resnet20"))
        assert next(iter(read_checkpoint(tmp_path / "ddp.pt")[1]["state_dict"])) == "conv1.weight"
    finally:
        dist.destroy_process_group()


def test_feature_taps_compile_fullgraph() -> None:
    model = create("resnet20").eval()
    x = images()
    expected_logits, expected = FeatureTaps(model)(x)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    try:
        with FeatureTaps(compiled) as taps:
            for _ in range(2):
                logits, feats = taps(x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(logits, expected_logits)
    for tap, value in expected.items():
        torch.testing.assert_close(feats[tap], value)


# ---------------------------------------------------------------- registry
def test_unknown_model_lists_names() -> None:
    with pytest.raises(KdpipeError, match="resnet20.*resnet56|resnet56.*resnet20"):
        create("resnet21")


def test_wrong_keyword_is_a_kdpipe_error() -> None:
    with pytest.raises(KdpipeError, match="width_mult"):
        create("resnet20", width_mult=2.0)
    assert count_params(create("mobilenetv2", width_mult=0.25)) < count_params(
        create("mobilenetv2_x0_5"))
    assert create("resnet20", num_classes=100).linear.out_features == 100
    assert "resnet110" in MODELS


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = trained_bn(create("plaincnn_student"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model.train()(images()), torch.tensor([0, 1])).backward()
    optimizer.step()
    model.eval()
    meta = meta_for("plaincnn_student")
    extra = {"trainer": {"epoch": 3, "optimizer": optimizer.state_dict(),
                         "rng": torch.get_rng_state(), "dtype": torch.float32}}
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(path, model, meta, extra=extra)

    loaded = load_checkpoint(path)
    assert not loaded.training
    torch.testing.assert_close(loaded(images()), model(images()), rtol=0, atol=0)
    got = checkpoint_meta(loaded)
    assert got.source_sha256 == file_sha256(path)
    assert got == CheckpointMeta(**{**meta.__dict__, "source_sha256": file_sha256(path)})
    assert got.mean == [0.49, 0.48, 0.45] and got.format == "kdpipe"

    raw_meta, raw = read_checkpoint(path)
    assert raw_meta == got and raw["trainer"]["epoch"] == 3
    resumed = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    resumed.load_state_dict(raw["trainer"]["optimizer"])
    assert torch.equal(raw["trainer"]["rng"], extra["trainer"]["rng"])


def test_checkpoint_keeps_model_kwargs(tmp_path: Path) -> None:
    model = create("mobilenetv2", width_mult=0.25).eval()
    save_checkpoint(tmp_path / "m.pt", model, meta_for("mobilenetv2", width_mult=0.25))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert count_params(loaded) == count_params(model)
    torch.testing.assert_close(loaded(images()), model(images()))


def test_interrupted_save_keeps_the_last_good_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    model = create("plaincnn_student")
    save_checkpoint(path, model, meta_for("plaincnn_student"))
    good = path.read_bytes()

    def crash(obj: object, f: Path) -> None:
        Path(f).write_bytes(good[: len(good) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, meta_for("plaincnn_student"))
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "zeros"])
def test_damaged_file_is_a_kdpipe_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, create("plaincnn_student"), meta_for("plaincnn_student"))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "text": b"epoch,loss\n1,0.5\n" * 20, "zeros": bytes(4096)}[damage])
    with pytest.raises(KdpipeError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(KdpipeError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(KdpipeError, match="is a folder"):
        load_checkpoint(tmp_path)


class _Pickled:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_python_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "obj": _Pickled()}, tmp_path / "obj.pt")
    with pytest.raises(KdpipeError, match="_Pickled.*weights_only"):
        load_checkpoint(tmp_path / "obj.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": _Pickled()}, f)
    with pytest.raises(KdpipeError):
        load_checkpoint(tmp_path / "plain.pkl")


def test_unknown_layout(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(KdpipeError, match="unknown checkpoint layout.*weights"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save([torch.zeros(3)], tmp_path / "y.pt")
    with pytest.raises(KdpipeError, match="unknown checkpoint layout.*list"):
        load_checkpoint(tmp_path / "y.pt")


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.pt", create("resnet20"), meta_for("resnet32"))
    with pytest.raises(KdpipeError, match=r"resnet32.*missing layer1\.3\.conv1\.weight"):
        load_checkpoint(tmp_path / "m.pt")
    save_checkpoint(tmp_path / "c.pt", create("resnet20", num_classes=100), meta_for("resnet20"))
    with pytest.raises(KdpipeError, match=r"wrong shape linear\.weight \(100, 64\) != \(10, 64\)"):
        load_checkpoint(tmp_path / "c.pt")


def test_unregistered_model_and_newer_versions(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.pt", create("resnet20"), meta_for("resnet20"))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**raw, "meta": {**raw["meta"], "model": "vit_tiny"}}, tmp_path / "vit.pt")
    with pytest.raises(KdpipeError, match="vit_tiny.*available: .*resnet20"):
        load_checkpoint(tmp_path / "vit.pt")
    torch.save({**raw, "kdpipe_checkpoint": 2}, tmp_path / "v2.pt")
    with pytest.raises(KdpipeError, match="version 2"):
        load_checkpoint(tmp_path / "v2.pt")
    torch.save({**raw, "meta": {**raw["meta"], "colour": "red"}}, tmp_path / "f.pt")
    with pytest.raises(KdpipeError, match="unknown fields \\['colour'\\]"):
        read_checkpoint(tmp_path / "f.pt")


def test_save_refuses_what_would_not_load(tmp_path: Path) -> None:
    model = create("plaincnn_student")
    with pytest.raises(KdpipeError, match=r"\['trainer'\]\['rng'\].*numpy"):
        save_checkpoint(tmp_path / "a.pt", model, meta_for("plaincnn_student"),
                        extra={"trainer": {"rng": np.zeros(3)}})
    with pytest.raises(KdpipeError, match="pathlib"):
        save_checkpoint(tmp_path / "a.pt", model, meta_for("plaincnn_student", root=tmp_path))
    with pytest.raises(KdpipeError, match="reserved"):
        save_checkpoint(tmp_path / "a.pt", model, meta_for("plaincnn_student"),
                        extra={"meta": {}})
    with pytest.raises(KdpipeError, match="not a registered model"):
        save_checkpoint(tmp_path / "a.pt", model, meta_for("mystery_net"))
    assert not list(tmp_path.iterdir())


def test_checkpoint_meta_of_a_fresh_model() -> None:
    with pytest.raises(KdpipeError, match="load_checkpoint"):
        checkpoint_meta(create("resnet20"))


# ---------------------------------------------------------------- pytorch_resnet_cifar10 import
def zoo_file(tmp_path: Path, model: nn.Module, **others: object) -> Path:
    """A file in the zoo's layout: DataParallel keys, no num_batches_tracked, best_prec1."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "zoo.th"
    torch.save({"best_prec1": 91.25, "state_dict": state, **others}, path)
    return path


def test_zoo_import(tmp_path: Path) -> None:
    source = trained_bn(create("resnet20"))
    path = zoo_file(tmp_path, source, recipe="SGD, 20 epochs", log=[{"epoch": 1}])
    model = load_checkpoint(path)
    torch.testing.assert_close(model(images()), source(images()), rtol=0, atol=0)
    meta = checkpoint_meta(model)
    assert (meta.model, meta.num_classes, meta.format) == ("resnet20", 10,
                                                           "pytorch_resnet_cifar10")
    assert meta.mean == list(ZOO_MEAN) and meta.std == list(ZOO_STD)
    assert meta.classes == list(CIFAR10_CLASSES) and meta.input_shape == [3, 32, 32]
    assert meta.metrics == {"best_prec1": 91.25} and meta.config == {"recipe": "SGD, 20 epochs"}
    assert meta.source_sha256 == file_sha256(path)
    _, raw = read_checkpoint(path)
    assert raw["log"] == [{"epoch": 1}] and "layer1.0.bn1.num_batches_tracked" in raw["state_dict"]


def test_zoo_import_of_a_bare_state_dict(tmp_path: Path) -> None:
    source = create("resnet32").eval()
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    model = load_checkpoint(tmp_path / "bare.pt")
    assert checkpoint_meta(model).model == "resnet32"
    torch.testing.assert_close(model(images()), source(images()))


def test_zoo_import_refuses_uneven_stages(tmp_path: Path) -> None:
    source = create("resnet20")
    source.layer3 = source.layer3[:2]
    with pytest.raises(KdpipeError, match="3/3/2 blocks"):
        load_checkpoint(zoo_file(tmp_path, source))


@pytest.mark.parametrize("file, depth", [("resnet20-12fca82f.th", 20),
                                         ("resnet56-4bfd9763.th", 56),
                                         ("resnet110-cifar10jpeg.th", 110)])
def test_shared_pretrained_files(file: str, depth: int) -> None:
    path = WEIGHTS / file
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared weights live in ../shared/weights)")
    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    assert meta.model == f"resnet{depth}" and meta.format == "pytorch_resnet_cifar10"
    assert count_params(model) == EXACT_PARAMS[meta.model]
    assert meta.source_sha256 == file_sha256(path)
    assert 80 < meta.metrics["best_prec1"] < 100
    if depth == 110:
        assert "recipe" in meta.config
