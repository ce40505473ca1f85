"""Shared fixtures: tiny synthetic data sets and the paths of the shared real data, when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_TARBALL = SHARED / "datasets" / "cifar10-images.tar.gz"
SHARED_WEIGHTS = SHARED / "weights"


def shared_file(path: Path) -> Path:
    """The path, or a skip naming what is missing (tests of real data need ../shared)."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared CIFAR-10 data and weights live in ../shared)")
    return path


def synthetic_dataset(
    n_train: int = 256, n_test: int = 100, num_classes: int = 10, size: int = 32, seed: int = 0
):
    """A learnable toy data set: each class is a colour plus noise, so a few steps help."""
    from kdpipe.data import CIFAR10_CLASSES, Dataset

    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(30, 225, (num_classes, 3, 1, 1), generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        noise = torch.randint(-30, 30, (n, 3, size, size), generator=g)
        images = (colours[labels] + noise).clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return Dataset(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=tuple(CIFAR10_CLASSES[:num_classes]),
        source="synthetic",
        source_hash=f"synthetic-{seed}",
    )


def write_image_folder(data, root: Path) -> Path:
    """Write a `Dataset` as an ImageFolder tree of PNGs (train/<class>/i.png, test/...)."""
    from PIL import Image

    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / data.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_data():
    return synthetic_dataset()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's image cache away from the user's ~/.cache, shared per session."""
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "kdpipe-cache"))


def fresh_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter (nothing imported yet: import-time checks); it must
    succeed, else the test fails with its stderr."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done
