"""Teacher outputs kept on disk and shared by runs that see the same augmented batches.

The data loader's order and augmentation are a pure function of (seed, epoch), so every KD cell of
a sweep with the same seed feeds the teacher the same batches: on a CPU, where the teacher's
forward costs more than the student's step, computing them once saves most of the time.

An entry is keyed by the teacher (its checkpoint's sha256 and the autocast dtype it ran in) and by
the sha1 of the batch tensor itself. The batch is a function of (data, seed, epoch, batch index,
batch size), so this is the key those determine, but keyed on content a stale entry can never be
served: a changed data set, crop or normalization simply misses. Entries hold the logits and
vector taps (the pooled embedding) in float32; spatial feature maps (FitNets' hints) would take
gigabytes per epoch and are computed live instead.

Layout: `<root>/<teacher key>/<sha1[:2]>/<sha1>.pt`, each written atomically, so concurrent or
interrupted writers leave whole files or none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from kdpipe.atomic import torch_save
from kdpipe.train.methods.base import Outputs


class TeacherCache:
    """Per-batch teacher logits and embeddings under `root`, for one teacher."""

    def __init__(self, root: str | Path, teacher_sha256: str, dtype: str = "fp32") -> None:
        self.dir = Path(root) / f"{teacher_sha256[:16]}-{dtype}"
        self.hits = 0
        self.misses = 0

    @staticmethod
    @torch.compiler.disable
    def key(images: torch.Tensor) -> str:
        """sha1 of the batch's shape, dtype and values (the memory layout does not matter)."""
        data = images.detach().cpu().contiguous()
        digest = hashlib.sha1(f"{tuple(data.shape)}{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    @torch.compiler.disable
    def load(self, key: str, taps: Sequence[str], device: torch.device) -> Outputs | None:
        """The cached outputs with every tap in `taps`, or None (then `save` what is computed)."""
        path = self.path(key)
        entry = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
        if entry is None or any(t not in entry["features"] for t in taps):
            self.misses += 1
            return None
        self.hits += 1
        return Outputs(entry["logits"].to(device),
                       {t: entry["features"][t].to(device) for t in taps})

    @torch.compiler.disable
    def save(self, key: str, outputs: Outputs) -> None:
        """Store logits and vector features (merged into an existing entry); maps are skipped."""
        path = self.path(key)
        features = {t: v.detach().cpu() for t, v in outputs.features.items() if v.dim() <= 2}
        if path.exists():
            old = torch.load(path, map_location="cpu", weights_only=True)["features"]
            if set(features) <= set(old):
                return
            features = {**old, **features}
        torch_save(path, {"logits": outputs.logits.detach().cpu(), "features": features})
