"""kdpipe.data: the three sources, the cache, splits, augmentation and both loaders."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    LOADERS,
    BatchLoader,
    Dataset,
    Loader,
    LoaderOptions,
    ReferenceLoader,
    crop_flip,
    default_data_path,
    load_dataset,
    make_loader,
    normalize,
    random_crop,
    random_flip,
    subset,
)
from kdpipe.data import sources as data_sources
from kdpipe.data.cache import cache_file
from kdpipe.errors import KdpipeError

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2
LOADER_KW = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD)


# ------------------------------------------------------------------------------------ fixtures


def random_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def save_image(image: torch.Tensor, path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, format=fmt)


def write_tree(root: Path, images: dict[str, torch.Tensor],
               labels: dict[str, torch.Tensor]) -> None:
    """An ImageFolder tree of PNGs (lossless, so every source must give identical tensors)."""
    for split in ("train", "test"):
        counters = [0] * len(CIFAR10_CLASSES)
        for image, label in zip(images[split], labels[split].tolist(), strict=True):
            name = f"{counters[label]:04d}.png"
            save_image(image, root / split / CIFAR10_CLASSES[label] / name)
            counters[label] += 1


def write_batches(folder: Path, images: dict[str, torch.Tensor],
                  labels: dict[str, torch.Tensor]) -> None:
    """torchvision's cifar-10-batches-py layout, in the real pickle format (bytes keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_rows = np.array_split(np.arange(len(labels["train"])), 5)
    for i, rows in enumerate(train_rows, start=1):
        batch = {b"data": images["train"][rows].reshape(len(rows), -1).numpy(),
                 b"labels": labels["train"][rows].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": images["test"].reshape(len(labels["test"]), -1).numpy(),
            b"labels": labels["test"].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": list(CIFAR10_CLASSES)}))


def make_tarball(tree: Path, dest: Path, top: str) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(tree, arcname=top or ".")
        junk = b"not an image"  # macOS resource forks and notes must be ignored
        for name in (f"{top}/train/cat/._0000.png", f"{top}/README.txt"):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(junk)
            tar.addfile(info, io.BytesIO(junk))
    return dest


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> SimpleNamespace:
    """The same tiny CIFAR-like set as a folder, two tarballs and torchvision batches."""
    base = tmp_path_factory.mktemp("fake-cifar")
    per_class = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    # class-major order: the order an ImageFolder (and so every source) yields
    labels = {s: torch.arange(10).repeat_interleave(n) for s, n in per_class.items()}
    images = {s: random_images(len(labels[s]), seed=i) for i, s in enumerate(per_class)}
    write_tree(base / "folder", images, labels)
    write_batches(base / "py" / "cifar-10-batches-py", images, labels)
    return SimpleNamespace(
        base=base, images=images, labels=labels, folder=base / "folder",
        batches=base / "py" / "cifar-10-batches-py",
        tarball=make_tarball(base / "folder", base / "nested.tar.gz", "cifar10"),
        flat_tarball=make_tarball(base / "folder", base / "flat.tar", ""),
    )


def synthetic(counts: list[int], n_test: int = 40) -> Dataset:
    """A data set whose image i carries i in its first pixels, so images can be identified."""
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(labels)) % 256
    images[:, 0, 0, 1] = torch.arange(len(labels)) // 256
    test_labels = torch.arange(n_test) % len(counts)
    return Dataset(images, labels, torch.zeros(n_test, 3, 8, 8, dtype=torch.uint8), test_labels,
                   classes=tuple(f"c{k}" for k in range(len(counts))), source="synthetic",
                   source_hash="synthetic")


def ids(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist())


# ------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    "which", ["folder", "tarball", "flat_tarball", "batches", "batches_parent"]
)
def test_every_source_gives_the_same_tensors(fake, tmp_path, which):
    path = fake.batches.parent if which == "batches_parent" else getattr(fake, which)
    ds = load_dataset(path, cache_dir=tmp_path, progress=False)
    assert ds.classes == CIFAR10_CLASSES
    assert torch.equal(ds.train_images, fake.images["train"])
    assert torch.equal(ds.train_labels, fake.labels["train"])
    assert torch.equal(ds.test_images, fake.images["test"])
    assert torch.equal(ds.test_labels, fake.labels["test"])
    assert ds.train_labels.dtype == torch.int64 and ds.val_images is None
    assert str(path) in ds.source and len(ds.source_hash) == 64


def test_no_path_reads_torchvision_layout_in_the_cache_dir(fake, tmp_path):
    shutil.copytree(fake.batches, tmp_path / "cifar-10-batches-py")
    ds = load_dataset(None, cache_dir=tmp_path, progress=False)
    assert torch.equal(ds.test_images, fake.images["test"])


def test_tarball_hash_is_its_sha256(fake, tmp_path):
    ds = load_dataset(fake.tarball, cache_dir=tmp_path, progress=True)
    import hashlib

    assert ds.source_hash == hashlib.sha256(fake.tarball.read_bytes()).hexdigest()


def test_other_image_sizes_are_resized_once(tmp_path):
    big = random_images(4, seed=5, size=40)
    for i, image in enumerate(big):
        split = "train" if i < 2 else "test"
        save_image(image, tmp_path / "data" / split / f"k{i % 2}" / "a.png")
    save_image(random_images(1, 6)[0], tmp_path / "data" / "train" / "k0" / "b.jpg", "JPEG")
    ds = load_dataset(tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert ds.train_images.shape == (3, 3, 32, 32) and ds.test_images.shape == (2, 3, 32, 32)
    expected = Image.fromarray(big[0].permute(1, 2, 0).numpy()).resize((32, 32), Image.BILINEAR)
    assert torch.equal(ds.train_images[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    small = load_dataset(tmp_path / "data", cache_dir=tmp_path / "cache", image_size=16,
                         progress=False)
    assert small.train_images.shape == (3, 3, 16, 16)


def test_batches_are_resized_to_image_size(fake, tmp_path):
    ds = load_dataset(fake.batches, cache_dir=tmp_path, image_size=24, progress=False)
    assert ds.train_images.shape == (50, 3, 24, 24) and ds.test_images.dtype == torch.uint8


def test_parallel_decoding_keeps_order_and_names_the_bad_image(monkeypatch):
    from kdpipe.data import decode

    images = random_images(10, 11)
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    monkeypatch.setattr(decode, "CHUNK", 3)  # several chunks, spread over a pool
    monkeypatch.setattr(decode, "MIN_PARALLEL", 0)
    assert torch.equal(decode.decode_images(blobs, 32), images)
    blobs[7] = blobs[7][:100]
    with pytest.raises(decode.ImageDecodeError) as info:
        decode.decode_images(blobs, 32)
    assert info.value.index == 7


def test_download_goes_through_torchvision(fake, tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:  # stands in for torchvision.datasets.CIFAR10: no network here
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            shutil.copytree(fake.batches, Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    ds = load_dataset(tmp_path / "dl", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert calls == [(str(tmp_path / "dl"), True)]
    assert torch.equal(ds.train_images, fake.images["train"])
    load_dataset(tmp_path / "dl", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 1  # present now: not fetched again


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(root, train=True, download=False):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(KdpipeError, match="downloading CIFAR-10 .* network is unreachable.*--data"):
        load_dataset(None, download=True, cache_dir=tmp_path, progress=False)


# -------------------------------------------------------------------------------------- errors


def _truncated_image_tree(tmp_path: Path) -> Path:
    write_tree(tmp_path / "t", {"train": random_images(2, 1), "test": random_images(1, 2)},
               {"train": torch.tensor([0, 1]), "test": torch.tensor([0])})
    bad = tmp_path / "t" / "train" / "automobile" / "0000.png"
    bad.write_bytes(bad.read_bytes()[:200])
    return tmp_path / "t"


def _one_split_tree(tmp_path: Path) -> Path:
    save_image(random_images(1, 3)[0], tmp_path / "train" / "cat" / "a.png")
    (tmp_path / "test").mkdir()
    return tmp_path


def _truncated_gzip(tmp_path: Path, fake) -> Path:
    dest = tmp_path / "cut.tar.gz"
    data = fake.tarball.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _missing_batch(tmp_path: Path, fake) -> Path:
    shutil.copytree(fake.batches, tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    return tmp_path


def _garbage_batch(tmp_path: Path, fake) -> Path:
    shutil.copytree(fake.batches, tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    return tmp_path


def _unsafe_batch(tmp_path: Path, fake) -> Path:
    shutil.copytree(fake.batches, tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Path("x")}))
    return tmp_path


BROKEN = {
    "missing path": (lambda tmp, fake: tmp / "nope", "does not exist"),
    "empty folder": (lambda tmp, fake: tmp, "neither train/ and test/"),
    "not a tarball": (lambda tmp, fake: _write(tmp / "x.tar.gz", b"hello" * 100), "not a tarball"),
    "truncated gzip": (_truncated_gzip, "damaged or not a tarball"),
    "plain file": (lambda tmp, fake: _write(tmp / "x.zip", b"PK"), "not a .tar"),
    "no test split": (lambda tmp, fake: _mkdirs(tmp, "train/cat"), "neither train/ and test/"),
    "empty class": (lambda tmp, fake: _mkdirs(tmp, "train/cat", "test"), "holds no images"),
    "empty test split": (lambda tmp, fake: _one_split_tree(tmp), "test/ holds no images"),
    "truncated image": (lambda tmp, fake: _truncated_image_tree(tmp),
                        "cannot decode .*automobile/0000.png"),
    "missing batch": (_missing_batch, "no CIFAR-10 python batches"),
    "garbage batch": (_garbage_batch, "test_batch is not a CIFAR-10 python batch"),
    "unsafe pickle": (_unsafe_batch, "refusing to load"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdirs(root: Path, *folders: str) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True)
    return root


@pytest.mark.parametrize("case", list(BROKEN))
def test_missing_or_damaged_data_is_one_helpful_error(fake, tmp_path, case):
    make, pattern = BROKEN[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs, fake)
    with pytest.raises(KdpipeError, match=pattern) as info:
        load_dataset(path, cache_dir=tmp_path / "cache", progress=False)
    if case != "empty class":  # that message says to remove the folder instead
        assert "--data" in str(info.value) and "--download" in str(info.value)


def test_no_data_at_all_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(KdpipeError, match="--data PATH .*--download"):
        load_dataset(None, cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------- cache


@pytest.mark.parametrize("which, reader", [("folder", "FolderSource"),
                                           ("tarball", "TarballSource"),
                                           ("batches", "TorchvisionSource")])
def test_second_load_reads_only_the_cache(fake, tmp_path, monkeypatch, which, reader):
    first = load_dataset(getattr(fake, which), cache_dir=tmp_path, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("the source was decoded again")

    monkeypatch.setattr(getattr(data_sources, reader), "read", fail)
    second = load_dataset(getattr(fake, which), cache_dir=tmp_path, progress=False)
    assert torch.equal(first.train_images, second.train_images)
    assert second.source_hash == first.source_hash


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_damaged_cache_is_rebuilt(fake, tmp_path, damage):
    ds = load_dataset(fake.folder, cache_dir=tmp_path, progress=False)
    (file,) = (tmp_path / "data").glob("*.pt")
    if damage == "garbage":
        file.write_bytes(b"not a torch file")
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[:1000])
    else:
        torch.save({"train_images": torch.zeros(3)}, file)
    again = load_dataset(fake.folder, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.train_images, ds.train_images)
    assert torch.load(file, weights_only=True)["version"] == 1  # rewritten


def test_cache_dir_defaults_to_env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "env-cache"))
    ds = load_dataset(fake.tarball, progress=False)
    assert cache_file(tmp_path / "env-cache", "tarball", ds.source_hash, 32).is_file()


def test_changed_folder_misses_the_cache(fake, tmp_path):
    shutil.copytree(fake.folder, tmp_path / "f")
    first = load_dataset(tmp_path / "f", cache_dir=tmp_path / "c", progress=False)
    save_image(random_images(1, 9)[0], tmp_path / "f" / "train" / "cat" / "0000.png")
    second = load_dataset(tmp_path / "f", cache_dir=tmp_path / "c", progress=False)
    assert second.source_hash != first.source_hash
    assert not torch.equal(second.train_images, first.train_images)


# -------------------------------------------------------------------------------------- splits


def test_subset_is_stratified_and_deterministic():
    ds = synthetic([30, 20, 10])
    sub = subset(ds, limit_train=30, limit_test=12, seed=1)
    assert torch.bincount(sub.train_labels).tolist() == [15, 10, 5]
    assert torch.bincount(sub.test_labels).tolist() == [4, 4, 4]
    same = subset(ds, limit_train=30, limit_test=12, seed=1)
    assert torch.equal(sub.train_images, same.train_images)
    other = subset(ds, limit_train=30, seed=2)
    assert ids(other.train_images) != ids(sub.train_images)
    assert ids(subset(ds, limit_train=12, seed=1).train_images) <= ids(sub.train_images)  # nested


def test_rounding_keeps_the_total():
    ds = synthetic([7, 7, 7])
    assert len(subset(ds, limit_train=10).train_labels) == 10
    assert len(subset(ds, limit_train=1000).train_labels) == 21  # a larger limit keeps all


def test_validation_split_is_held_out():
    ds = synthetic([30, 20, 10])
    sub = subset(ds, val_size=12, limit_train=24, seed=3)
    assert torch.bincount(sub.val_labels).tolist() == [6, 4, 2]
    assert not ids(sub.val_images) & ids(sub.train_images)
    assert len(sub.train_labels) == 24
    # the held-out images do not depend on the train limit
    assert torch.equal(subset(ds, val_size=12, seed=3).val_images, sub.val_images)
    with pytest.raises(KdpipeError, match="val_size"):
        subset(ds, val_size=60)
    with pytest.raises(KdpipeError, match="limit_train"):
        subset(ds, limit_train=0)


# -------------------------------------------------------------------------------- augmentation


def test_flip_is_an_exact_mirror():
    x = random_images(64, 0)
    y = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x, strict=True)])
    assert torch.all(flipped | kept) and flipped.any() and kept.any()


def test_crop_is_a_window_of_the_zero_padded_image():
    x = random_images(32, 1, size=8)
    y = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for a, p in zip(y, padded, strict=True):
        windows = [p[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(a, w) for w in windows)


def test_crop_flip_matches_slicing():
    x = random_images(6, 2, size=8)
    dy, dx = torch.tensor([0, 4, 2, 1, 3, 0]), torch.tensor([4, 0, 2, 3, 1, 0])
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(x, 2, dy, dx, flip)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        window = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)
    assert torch.equal(crop_flip(x, 2, torch.full((6,), 2), torch.full((6,), 2)), x)


def test_normalize_matches_the_formula():
    x = random_images(4, 3)
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    torch.testing.assert_close(normalize(x, CIFAR10_MEAN, CIFAR10_STD), expected)
    assert normalize(x[0], CIFAR10_MEAN, CIFAR10_STD).shape == (3, 32, 32)


# ------------------------------------------------------------------------------------- loaders


def _batches(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_same_seed_and_epoch_give_identical_batches():
    x, y = random_images(100, 4), torch.arange(100) % 10
    a = BatchLoader(x, y, batch_size=16, train=True, seed=7, **LOADER_KW)
    b = BatchLoader(x, y, batch_size=16, train=True, seed=7, **LOADER_KW)
    for (xa, ya), (xb, yb) in zip(_batches(a, 3), _batches(b, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_batches(a, 3)[0][0], _batches(a, 4)[0][0])
    c = BatchLoader(x, y, batch_size=16, train=True, seed=8, **LOADER_KW)
    assert not torch.equal(_batches(a, 3)[0][0], _batches(c, 3)[0][0])


def test_train_loader_shuffles_crops_flips_and_drops_the_partial_batch():
    x, y = random_images(100, 5), torch.arange(100)
    loader = BatchLoader(x, y, batch_size=16, train=True, **LOADER_KW)
    batches = _batches(loader, 2)
    assert len(loader) == len(batches) == 6 and loader.num_samples == 100
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert images.dtype == torch.float32 and images.shape == (96, 3, 32, 32)
    assert len(set(labels.tolist())) == 96 and labels.tolist() != sorted(labels.tolist())
    plain = normalize(x[labels], CIFAR10_MEAN, CIFAR10_STD)
    assert not torch.allclose(images, plain)  # augmented
    # each image is a window of its padded original, possibly mirrored
    padded = torch.nn.functional.pad(x[labels], (4, 4, 4, 4))
    for img, p in zip(images[:8], padded[:8], strict=True):
        windows = [p[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        candidates = torch.stack([w for win in windows for w in (win, win.flip(-1))])
        assert any(torch.equal(c, img) for c in normalize(candidates, CIFAR10_MEAN, CIFAR10_STD))
    assert len(BatchLoader(x, y, batch_size=16, train=True, drop_last=False, **LOADER_KW)) == 7


def test_eval_loader_is_in_order_unaugmented_and_normalized():
    x, y = random_images(50, 6), torch.arange(50) % 10
    loader = BatchLoader(x, y, batch_size=16, train=False, channels_last=True, **LOADER_KW)
    batches = list(loader)
    assert len(loader) == len(batches) == 4  # nothing dropped
    images = torch.cat([b[0] for b in batches])
    assert torch.equal(images, normalize(x, CIFAR10_MEAN, CIFAR10_STD))
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_distributed_shards_are_disjoint_equal_and_cover():
    n, world = 50, 3
    x, y = random_images(n, 7), torch.arange(n)
    seen = []
    for rank in range(world):
        loader = BatchLoader(x, y, batch_size=4, train=True, drop_last=False, rank=rank,
                             world_size=world, **LOADER_KW)
        labels = torch.cat([b[1] for b in _batches(loader, 1)]).tolist()
        assert len(labels) == loader.num_samples == n // world
        seen.append(set(labels))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert len(set.union(*seen)) == n - n % world
    evals = [torch.cat([b[1] for b in BatchLoader(x, y, batch_size=4, train=False, rank=r,
                                                  world_size=world, **LOADER_KW)]).tolist()
             for r in range(world)]
    assert sorted(sum(evals, [])) == list(range(n))  # evaluation sees every image once


def test_augmentation_does_not_depend_on_sharding_or_batch_size():
    x, y = random_images(40, 8), torch.arange(40)

    def by_image(**kw) -> dict[int, torch.Tensor]:
        loader = BatchLoader(x, y, train=True, seed=3, **LOADER_KW, **kw)
        return {int(label): img for xb, yb in _batches(loader, 5)
                for img, label in zip(xb, yb, strict=True)}

    whole = by_image(batch_size=8)
    for rank in range(2):
        for label, img in by_image(batch_size=5, rank=rank, world_size=2).items():
            assert torch.equal(img, whole[label])


def test_reference_loader_has_the_same_interface_and_values():
    x, y = random_images(40, 9), torch.arange(40) % 10
    ref = ReferenceLoader(x, y, batch_size=16, train=False, num_workers=0, **LOADER_KW)
    fast = BatchLoader(x, y, batch_size=16, train=False, **LOADER_KW)
    assert len(ref) == len(fast) == 3 and ref.num_samples == 40
    for (xr, yr), (xf, yf) in zip(ref, fast, strict=True):
        assert xr.dtype == xf.dtype == torch.float32 and yr.dtype == yf.dtype == torch.int64
        torch.testing.assert_close(xr, xf)
        assert torch.equal(yr, yf)
    train = ReferenceLoader(x, y, batch_size=16, train=True, num_workers=0, seed=2, **LOADER_KW)
    fast_train = BatchLoader(x, y, batch_size=16, train=True, seed=2, **LOADER_KW)
    ref_batches, fast_batches = _batches(train, 1), _batches(fast_train, 1)
    assert len(ref_batches) == len(train) == 2  # partial batch dropped, as in the tensor loader
    assert [b[0].shape for b in ref_batches] == [b[0].shape for b in fast_batches]
    assert [b[1].tolist() for b in ref_batches] == [b[1].tolist() for b in fast_batches]


def test_reference_loader_reads_an_image_folder(fake):
    loader = ReferenceLoader.from_image_folder(fake.folder / "test", batch_size=8, train=False,
                                               num_workers=0, **LOADER_KW)
    images = torch.cat([b[0] for b in loader])
    torch.testing.assert_close(images, normalize(fake.images["test"], CIFAR10_MEAN, CIFAR10_STD))


def test_make_loader_picks_by_name():
    x, y = random_images(20, 10), torch.arange(20)
    kw = dict(batch_size=4, train=False, num_workers=0, **LOADER_KW)
    assert isinstance(make_loader("tensor", x, y, **kw), BatchLoader)  # num_workers ignored
    assert isinstance(make_loader("reference", x, y, **kw), ReferenceLoader)
    with pytest.raises(KdpipeError, match="reference, tensor"):
        make_loader("fast", x, y, **kw)


def test_one_options_object_builds_every_loader_as_its_keywords_do(fake):
    """`LoaderOptions` declares the loaders' options once: passing one equals passing its fields
    as keywords, keywords next to one override it, and an unknown name is refused."""
    x, y = random_images(24, 11), torch.arange(24) % 10
    options = LoaderOptions(batch_size=8, train=True, seed=5, num_workers=0, **LOADER_KW)
    for kind in LOADERS.names():
        by_options = make_loader(kind, x, y, options)
        by_keywords = make_loader(kind, x, y, batch_size=8, train=True, seed=5, num_workers=0,
                                  **LOADER_KW)
        assert isinstance(by_options, Loader) and by_options.options == by_keywords.options
        assert [b[1].tolist() for b in _batches(by_options, 2)] == [
            b[1].tolist() for b in _batches(by_keywords, 2)]
        evaluation = make_loader(kind, x, y, options, train=False)
        assert evaluation.options.train is False and evaluation.drop_last is False
        assert len(evaluation) == 3 and len(by_options) == 3
    folder = ReferenceLoader.from_image_folder(fake.folder / "test", options, train=False)
    assert folder.options == LoaderOptions(batch_size=8, train=False, seed=5, num_workers=0,
                                           **LOADER_KW)
    with pytest.raises(TypeError, match="batch_sise"):
        BatchLoader(x, y, batch_sise=8, train=True, **LOADER_KW)


# ------------------------------------------------------------------------------- the real data


def test_default_data_path_looks_beside_the_working_folder(tmp_path, monkeypatch):
    tarball = tmp_path / "shared" / "datasets" / "cifar10-images.tar.gz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert default_data_path() == tarball.resolve()


@pytest.mark.slow
def test_shared_cifar10_tarball_loads_and_caches(tmp_path_factory):
    path = default_data_path()
    if path is None:
        pytest.skip("../shared/datasets/cifar10-images.tar.gz is absent (the shared CIFAR-10 "
                    "JPEG export); pass --data to use a copy elsewhere")
    cache = tmp_path_factory.getbasetemp() / "kdpipe-cache"  # the session's cache (conftest)
    start = time.perf_counter()
    ds = load_dataset(path, cache_dir=cache, progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = load_dataset(path, cache_dir=cache, progress=False)
    second = time.perf_counter() - start
    print(f"shared tarball: first load {first:.1f} s, cached load {second:.2f} s")
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.test_images.shape[0] == 10000
    assert torch.bincount(ds.train_labels).tolist() == [5000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert torch.equal(again.test_images, ds.test_images)
