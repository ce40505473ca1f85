"""Every registry entry gets its tests, as timm tests every model: every export target at every
quantization it supports, and every runtime on every artifact kind it opens. A new target or
runtime is covered by adding it to its registry; nothing here names one.

The model is the 73k-parameter `plaincnn_student` (random init, synthetic data), so the whole
matrix stays within a minute or two; accuracy on real data is tests/test_export.py's job.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdpipe.export import export_checkpoint, read_metadata
from kdpipe.export.base import Normalized
from kdpipe.export.targets import TARGETS
from kdpipe.models import CheckpointMeta, create, load_checkpoint, save_checkpoint
from kdpipe.models.cifar import CIFAR10_CLASSES, ZOO_MEAN, ZOO_STD
from kdpipe.runtime import RUNTIMES, runtime
from kdpipe.runtime.artifact import open_artifact

from .conftest import synthetic_dataset

MODEL = "plaincnn_student"
JOBS = [(name, quantize) for name in TARGETS.names()
        for quantize in TARGETS.get(name).quantizations]


def _missing(target_name: str) -> str:
    ok, why = TARGETS.get(target_name).available()
    return "" if ok else why


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    meta = CheckpointMeta(model=MODEL, model_kwargs={}, num_classes=10,
                          classes=list(CIFAR10_CLASSES), mean=list(ZOO_MEAN), std=list(ZOO_STD),
                          input_shape=[3, 32, 32])
    path = tmp_path_factory.mktemp("registry") / f"{MODEL}.pt"
    save_checkpoint(path, create(MODEL).eval(), meta)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """(target, quantize) -> the export results, made once for the module."""
    out = tmp_path_factory.mktemp("artifacts")
    data = synthetic_dataset(n_train=32, n_test=24)
    results = {}
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Random-init logits are near-uniform: int8 rounding flips many top-1s. The int8 gates
        # are tested on the pretrained net in test_export.py; here every combination must run.
        patch.setattr("kdpipe.export.parity.MIN_INT8_AGREEMENT", 0.0)
        patch.setattr("kdpipe.export.parity.MAX_TOP1_DROP", 100.0)
        for name, quantize in JOBS:
            if _missing(name):
                continue
            results[name, quantize] = export_checkpoint(
                checkpoint, name, quantize, out, dataset=data, parity_size=24,
                calibration_size=32, batch_sizes="1,2")
    return results


@pytest.mark.parametrize("target, quantize", JOBS)
def test_every_target_exports_every_quantization_it_supports(exported, target, quantize):
    if _missing(target):
        pytest.skip(_missing(target))
    results = exported[target, quantize]
    assert results and all(r.status == "ok" for r in results)
    for result in results:
        meta = read_metadata(result.path)
        assert meta.format == target and meta.runtime in RUNTIMES
        assert meta.model == MODEL and meta.normalization_folded
        parity = meta.parity
        assert parity.passed is not False
        if parity.checked and meta.quantization == "fp32":
            assert parity.top1_agreement >= 99.9


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_every_runtime_reproduces_pytorch_on_the_artifacts_it_opens(exported, checkpoint, name):
    rt = runtime(name)
    model = Normalized(load_checkpoint(checkpoint), ZOO_MEAN, ZOO_STD).eval()
    opened = [open_artifact(checkpoint)] + [open_artifact(r.path) for results in exported.values()
                                             for r in results]
    mine = [a for a in opened if rt.runs(a)]
    if not mine:
        pytest.skip(f"no artifact of the formats {name} runs ({', '.join(rt.formats)}) was "
                    "exported here")
    available, why = rt.available_for(mine[0])
    if not available:
        pytest.skip(why)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    for artifact in mine:
        out = rt.load(artifact, threads=1).run(x)
        assert out.shape == (1, 10), artifact.name
        logits = artifact.metadata.get("output_kind") != "probabilities"
        if artifact.quantization == "fp32" and logits:
            np.testing.assert_allclose(out, expected, atol=1e-3, err_msg=artifact.name)
        else:
            assert np.isfinite(out).all(), artifact.name


def test_method_options_name_registered_methods_and_cover_their_labels():
    """A method's options are the DistillConfig fields whose `read_by` names it: every name there
    is a registered method, and every option a method's table label shows is one it reads."""
    import dataclasses
    import string

    from kdpipe.train.config import DistillConfig
    from kdpipe.train.methods import METHODS

    for f in dataclasses.fields(DistillConfig):
        assert set(f.metadata.get("read_by", ())) <= set(METHODS.names()), f.name
    for name in METHODS.names():
        method = METHODS.get(name)
        shown = {field for _, field, _, _ in string.Formatter().parse(method.label) if field}
        assert shown <= set(method.reads), (name, shown - set(method.reads))
    assert METHODS.get("fitnets").reads == ("hint_layer", "hint_epochs", "temperature", "alpha")
    assert METHODS.get("scratch").reads == ()
