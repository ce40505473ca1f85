"""The one checkpoint format: a dict of tensors and plain values, read with `weights_only=True`.

    {"kdpipe_checkpoint": 1, "meta": {CheckpointMeta fields}, "state_dict": {...}, **extra}

`extra` holds what a trainer needs to resume (optimizer and scheduler state, epoch, RNG state)
and, in a quantization-aware checkpoint (`kdpipe distill --qat`), the learned INT8 activation
ranges under `"qat"` (`LearnedQuantization.to_entry()`). The weights stay the plain FP32 state
dict, so such a checkpoint loads as an ordinary FP32 model everywhere; `load_checkpoint` attaches
the ranges as `model.kdpipe_qat`, which `learned_quantization(model)` reads.

Everything downstream reads a checkpoint through `load_checkpoint` / `read_checkpoint`, which
also import the pytorch_resnet_cifar10 layout (see `zoo.py`). Every failure a user can cause
(missing, truncated or foreign file, unknown model, weights that do not fit) is a `KdpipeError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdpipe.atomic import torch_save
from kdpipe.errors import KdpipeError
from kdpipe.hashing import file_sha256  # noqa: F401  (kdpipe.models.file_sha256)
from kdpipe.models.features import unwrap_model
from kdpipe.models.registry import MODELS, available, create
from kdpipe.models.zoo import import_zoo, is_zoo_layout

FORMAT_VERSION = 1
KDPIPE_FORMAT = "kdpipe"
_RESERVED = ("kdpipe_checkpoint", "meta", "state_dict")
QAT_KEY = "qat"  # the extra entry of a quantization-aware checkpoint
QAT_FORMAT = 1
PathLike = str | os.PathLike[str]


@dataclass
class CheckpointMeta:
    """What is needed to rebuild, feed and label a model without its training run."""

    model: str  # a registry name: kdpipe.models.create(model, num_classes, **model_kwargs)
    model_kwargs: dict[str, Any]
    num_classes: int
    classes: list[str]  # label index -> class name
    mean: list[float]  # per-channel input normalization, on [0, 1] RGB
    std: list[float]
    input_shape: list[int]  # [C, H, W], e.g. [3, 32, 32]
    source_sha256: str = ""  # sha256 of the file this was read from; filled on load
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    format: str = KDPIPE_FORMAT  # or "pytorch_resnet_cifar10" for an imported file

    def __post_init__(self) -> None:
        # Tuples and numpy scalars from callers become plain lists, so a saved meta loads back
        # equal and stays loadable with weights_only=True.
        self.model_kwargs = dict(self.model_kwargs)
        self.num_classes = int(self.num_classes)
        self.classes = [str(c) for c in self.classes]
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        self.input_shape = [int(v) for v in self.input_shape]


def save_checkpoint(path: PathLike, model: nn.Module, meta: CheckpointMeta,
                    extra: dict[str, Any] | None = None) -> None:
    """Write `model`'s weights with `meta` (and resume state in `extra`) atomically to `path`."""
    if meta.model not in MODELS:
        raise KdpipeError(
            f"cannot save: meta.model {meta.model!r} is not a registered model, so the checkpoint "
            f"could not be rebuilt; available: {', '.join(available())}"
        )
    extra = dict(extra or {})
    clash = [key for key in _RESERVED if key in extra]
    if clash:
        raise KdpipeError(f"cannot save: extra uses the reserved keys {clash}; rename them")
    # The file's own hash cannot be inside it, and what is written is a kdpipe file.
    saved = dataclasses.replace(meta, source_sha256="", format=KDPIPE_FORMAT)
    obj = {
        "kdpipe_checkpoint": FORMAT_VERSION,
        "meta": dataclasses.asdict(saved),
        "state_dict": unwrap_model(model).state_dict(),
        **extra,
    }
    _check_plain(obj, "checkpoint")
    torch_save(path, obj)


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> tuple[CheckpointMeta, dict]:
    """The metadata and the raw dict of a checkpoint (for resuming: `raw["state_dict"]`, extras).

    A pytorch_resnet_cifar10 file comes back converted: kdpipe state-dict keys, a `meta`, and the
    file's own top-level keys (`best_prec1`, and `recipe`, `log` where present).
    """
    path = Path(path)
    obj, sha256 = _load_file(path, map_location)
    raw = _as_kdpipe_layout(obj, path)
    meta = _meta_from_dict(raw["meta"], path)
    meta.source_sha256 = sha256
    return meta, raw


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """The model of a checkpoint, in eval mode, with its `CheckpointMeta` as `model.kdpipe_meta`."""
    meta, raw = read_checkpoint(path, map_location)
    model = _build(meta, Path(path))
    _load_state(model, raw["state_dict"], meta.model, Path(path))
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    model.kdpipe_meta = meta
    if QAT_KEY in raw:
        model.kdpipe_qat = LearnedQuantization.from_entry(raw[QAT_KEY], Path(path))
    return model


def checkpoint_meta(model: nn.Module) -> CheckpointMeta:
    """The metadata of a model returned by `load_checkpoint` (also through DDP/compile wrappers)."""
    meta = getattr(unwrap_model(model), "kdpipe_meta", None)
    if not isinstance(meta, CheckpointMeta):
        raise KdpipeError(
            "this model carries no checkpoint metadata: only models from "
            "kdpipe.models.load_checkpoint have it; read it with read_checkpoint(path) instead"
        )
    return meta


def check_fits_data(what: str, classes: Sequence[str], input_shape: Sequence[int],
                    data_classes: Sequence[str], data_shape: Sequence[int],
                    hint: str = "use a checkpoint trained on this data set") -> None:
    """A clear `KdpipeError` when a model (checkpoint or artifact) was made for other classes or
    another image size than the data it is about to be trained against, evaluated or benched on.
    `hint` says what to do about other classes."""
    if list(classes) != list(data_classes):
        raise KdpipeError(f"{what} was trained for classes {list(classes)} but the data has "
                          f"{list(data_classes)}; {hint}")
    if list(input_shape) != list(data_shape):
        raise KdpipeError(f"{what} expects inputs of shape {list(input_shape)} but the data has "
                          f"{list(data_shape)}")


def _load_file(path: Path, map_location: Any) -> tuple[Any, str]:
    """`torch.load(weights_only=True)` of the bytes that were hashed (read once, so they agree)."""
    if not path.exists():
        raise KdpipeError(f"checkpoint not found: {path} (check the path; cwd is {Path.cwd()})")
    if path.is_dir():
        raise KdpipeError(f"{path} is a folder; pass the checkpoint file inside it")
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words it "Unsupported global: GLOBAL x.y" or, for a blocked module such as
        # os/posix, "Trying to load unsupported GLOBAL x.y whose module x is blocked".
        refused = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        if refused:
            raise KdpipeError(
                f"{path} refused: it contains code ({refused[1]}), not just tensors; kdpipe loads "
                "checkpoints with weights_only=True, so none of it ran. Load only checkpoints of "
                "tensors and plain values, such as those written by save_checkpoint"
            ) from None
        raise KdpipeError(_unreadable(path, e)) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... on damaged files
        raise KdpipeError(_unreadable(path, e)) from None
    return obj, hashlib.sha256(data).hexdigest()


def _unreadable(path: Path, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"{path} is not a readable PyTorch checkpoint ({reason[:200]}); it may be truncated by an "
        "interrupted copy or download, or be another kind of file: copy it again or re-create it"
    )


def _as_kdpipe_layout(obj: Any, path: Path) -> dict[str, Any]:
    """The kdpipe raw dict of a kdpipe or pytorch_resnet_cifar10 file; anything else is refused."""
    if isinstance(obj, dict) and "kdpipe_checkpoint" in obj:
        if obj["kdpipe_checkpoint"] != FORMAT_VERSION:
            raise KdpipeError(
                f"{path} is kdpipe checkpoint version {obj['kdpipe_checkpoint']!r}; this kdpipe "
                f"reads version {FORMAT_VERSION}: upgrade kdpipe"
            )
        broken = [key for key in ("meta", "state_dict") if not isinstance(obj.get(key), dict)]
        if broken:
            raise KdpipeError(f"{path} is a damaged kdpipe checkpoint: {broken} missing")
        return obj
    if is_zoo_layout(obj):
        try:
            return import_zoo(obj)
        except KdpipeError as e:
            raise KdpipeError(f"{path}: {e}") from None
    found = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else (
        f"a {type(obj).__name__}")
    raise KdpipeError(
        f"{path} has an unknown checkpoint layout ({found}); kdpipe reads its own checkpoints "
        "(save_checkpoint, kdpipe train) and pytorch_resnet_cifar10 ResNets "
        "({'state_dict': {'module.conv1.weight', ...}})"
    )


def _meta_from_dict(meta: dict[str, Any], path: Path) -> CheckpointMeta:
    fields = dataclasses.fields(CheckpointMeta)
    known = {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    unknown, missing = sorted(set(meta) - known), sorted(required - set(meta))
    if unknown or missing:
        raise KdpipeError(
            f"{path}: checkpoint metadata has unknown fields {unknown} and lacks {missing}; "
            "it was written by another kdpipe version or edited by hand"
        )
    try:
        return CheckpointMeta(**meta)
    except (TypeError, ValueError) as e:
        raise KdpipeError(f"{path}: malformed checkpoint metadata: {e}") from None


def _build(meta: CheckpointMeta, path: Path) -> nn.Module:
    try:
        return create(meta.model, num_classes=meta.num_classes, **meta.model_kwargs)
    except KdpipeError as e:
        raise KdpipeError(f"{path} cannot be rebuilt: {e}") from None


def _load_state(model: nn.Module, state: dict[str, Any], name: str, path: Path) -> None:
    """`load_state_dict(strict=True)`, with a mismatch reported key by key instead of raised."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {_shape(state[key])} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and _shape(state[key]) != tuple(value.shape)
    ]
    if missing or unexpected or wrong:
        problems = [f"{label} {_few(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                    if keys]
        raise KdpipeError(
            f"{path}: the weights do not fit model {name!r}: {'; '.join(problems)}. "
            "Was the checkpoint written for another model or number of classes?"
        )
    model.load_state_dict(state)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _few(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> None:
    """Refuse, before writing, what `torch.load(weights_only=True)` would refuse when reading.

    Exact types: numpy scalars subclass float yet pickle as numpy objects.
    """
    if isinstance(value, torch.Tensor) or type(value) in _LEAVES:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    raise KdpipeError(
        f"cannot save {where}: a {kind} would not load with torch.load(weights_only=True); "
        "store tensors, numbers, strings, lists or dicts (e.g. torch.from_numpy(a), a.tolist(), "
        "str(path))"
    )


# ----------------------------------------------------------------- learned quantization (QAT)
@dataclass
class ActivationRange:
    """One fake-quantized activation of a quantization-aware run and the int8 grid it learned.

    x ~ scale * (q - zero_point), q in [quant_min, quant_max] (int8, asymmetric, per tensor);
    `scale` and `zero_point` are what the observer derived from `min_val`/`max_val`, the
    moving-average range it kept while training. `name` is its fake-quant module in the training
    graph (for resuming). `fingerprints` identify the tensor(s) it quantizes in any FP32 graph of
    the same weights: one `fingerprint` per place, of the activation on the probe images.
    """

    name: str
    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    min_val: float
    max_val: float
    fingerprints: list[torch.Tensor]


@dataclass
class LearnedQuantization:
    """The learned activation ranges of a QAT checkpoint, in a plain form that names no torch or
    torchao class, so any exporter finds them in its own graph.

    `scheme` describes what training simulated (plain strings and numbers). `probe` holds the
    images ([N, C, H, W] float32 pixels in [0, 1], before normalization) the fingerprints were
    computed on: an exporter runs them through its FP32 graph and `match`es tensor by tensor.
    """

    scheme: dict[str, Any]
    probe: torch.Tensor
    activations: list[ActivationRange]

    def to_entry(self) -> dict[str, Any]:
        """The checkpoint's `"qat"` entry: dicts, lists, numbers and tensors only."""
        return {"format": QAT_FORMAT, "scheme": dict(self.scheme), "probe": self.probe,
                "activations": [dataclasses.asdict(a) for a in self.activations]}

    @classmethod
    def from_entry(cls, entry: Any, path: Path | None = None) -> LearnedQuantization:
        """Read a `"qat"` entry back; a malformed one is a `KdpipeError`."""
        where = f"{path}: " if path else ""
        if not isinstance(entry, dict) or entry.get("format") != QAT_FORMAT:
            found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
            raise KdpipeError(f"{where}the learned quantization entry has format {found!r}; this "
                              f"kdpipe reads format {QAT_FORMAT}: upgrade kdpipe")
        try:
            return cls(scheme=dict(entry["scheme"]), probe=entry["probe"],
                       activations=[ActivationRange(**a) for a in entry["activations"]])
        except (KeyError, TypeError) as e:
            raise KdpipeError(f"{where}damaged learned quantization entry ({e})") from None

    def match(self, tensors: Mapping[str, Any]) -> dict[str, ActivationRange]:
        """For each named tensor (torch or numpy, computed on `probe` by an FP32 graph of these
        weights) that holds the values of a learned activation, that activation's range."""
        found = {}
        for name, value in tensors.items():
            mark = fingerprint(value)
            if mark is None:
                continue
            for act in self.activations:
                if any(_same_values(mark, known) for known in act.fingerprints):
                    found[name] = act
                    break
        return found


def fingerprint(values: Any) -> torch.Tensor | None:
    """Per channel (dim 1), the mean and the mean square of an activation: [2, C] float32.

    Invariant under reshapes that keep the channel axis (a flatten after pooling), and different
    for any two distinct activations in practice; None for a tensor without a channel axis.
    """
    x = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if x.dim() < 2:
        return None
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return torch.stack([flat.mean(1), flat.square().mean(1)]).float()


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    # BatchNorm folded into a convolution, another conv kernel or operation order move FP32
    # activations by ~1e-6 relative; distinct activations differ by far more than 1e-3.
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3,
                                                 atol=1e-3 * float(b.abs().max()) + 1e-7)


def learned_quantization(model: nn.Module) -> LearnedQuantization | None:
    """The learned activation ranges of a model loaded from a QAT checkpoint (also inside a
    wrapper, such as the export's `Normalized`), or None for an ordinary checkpoint."""
    for module in model.modules():
        learned = getattr(module, "kdpipe_qat", None)
        if isinstance(learned, LearnedQuantization):
            return learned
    return None
