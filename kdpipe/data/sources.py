"""Where CIFAR-10 comes from: torchvision's python batches, an ImageFolder tree, or a tarball.

Each source knows three things: how to describe itself to a person, a fingerprint of its content
(the cache key), and how to read itself into uint8 tensors. `resolve_source` picks the source a
path names. Every way the data can be missing or damaged ends in one `KdpipeError` that says how
to get the data.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np
import torch

from kdpipe.data.decode import (
    ImageDecodeError,
    decode_images,
    is_image_name,
    progress_bar,
    resize_images,
)
from kdpipe.errors import KdpipeError
from kdpipe.hashing import file_sha256

HOW_TO_GET_DATA = (
    "pass --data PATH to an ImageFolder tree (train/<class>/*.jpg and test/<class>/*.jpg) or a "
    ".tar/.tar.gz of one, or --download to fetch CIFAR-10 with torchvision"
)
SPLITS = ("train", "test")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# torchvision's CIFAR10 layout (torchvision/datasets/cifar.py).
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META_FILE = "batches.meta"
CIFAR_SIZE = 32

# An image of an ImageFolder tree: (split, class, path inside the class folder).
Key = tuple[str, str, str]


@dataclass
class Decoded:
    """What a source reads: both splits as uint8 [N,3,S,S] images and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


class Source(Protocol):
    kind: str  # short name, part of the cache file's name

    def describe(self) -> str: ...

    def fingerprint(self) -> str: ...

    def read(self, image_size: int, progress: bool) -> Decoded: ...


def resolve_source(path: str | Path | None, *, download: bool, cache_dir: Path) -> Source:
    """The source `path` names; with `download`, torchvision may fetch CIFAR-10 into it first.

    `None` means torchvision's layout inside `cache_dir`. A folder holding (or named)
    `cifar-10-batches-py` is torchvision's layout; a folder holding `train/` and `test/` (directly
    or one level down) is an ImageFolder tree; a `.tar`/`.tar.gz`/`.tgz` file is a tarball.
    """
    if path is None or str(path) == "":  # "" would otherwise mean the working folder
        return _batches(cache_dir, download, given="no --data was given")
    path = Path(path).expanduser()
    if path.is_file():
        if path.name.lower().endswith(TAR_SUFFIXES):
            return TarballSource(path)
        raise KdpipeError(
            f"{path} is a file but not a .tar/.tar.gz/.tgz archive; {HOW_TO_GET_DATA}"
        )
    if path.is_dir():
        if path.name == BATCHES_FOLDER:
            return _batches(path.parent, download)
        if (path / BATCHES_FOLDER).is_dir():
            return _batches(path, download)
        root = find_tree_root(path)
        if root is not None:
            return FolderSource(root)
        if download:
            return _batches(path, download)
        raise KdpipeError(
            f"{path} holds neither train/ and test/ class folders nor {BATCHES_FOLDER}; "
            f"{HOW_TO_GET_DATA}"
        )
    if download and not path.name.lower().endswith(TAR_SUFFIXES):
        return _batches(path, download)
    raise KdpipeError(f"{path} does not exist; {HOW_TO_GET_DATA}")


# ---------------------------------------------------------------- ImageFolder trees (folder, tar)


def _file_order(key: Key) -> tuple[str, str]:
    """ImageFolder's order inside a class: by sub-folder, then by file name (sorted os.walk)."""
    folder, _, name = key[2].rpartition("/")
    return folder, name


def decode_tree(files: dict[Key, bytes], where: str, image_size: int, progress: bool) -> Decoded:
    """Decode an ImageFolder tree's files; labels follow the sorted class-folder names of train/."""
    classes = tuple(sorted({cls for split, cls, _ in files if split == "train"}))
    unknown = sorted({cls for split, cls, _ in files if split == "test"} - set(classes))
    if unknown:
        raise KdpipeError(
            f"{where}: test/ has classes that train/ lacks ({', '.join(unknown)}); both splits "
            f"need the same class folders. {HOW_TO_GET_DATA}"
        )
    index = {cls: i for i, cls in enumerate(classes)}
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in SPLITS:
        keys = sorted((k for k in files if k[0] == split),
                      key=lambda k: (index[k[1]], _file_order(k)))
        if not keys:
            raise KdpipeError(f"{where}: {split}/ holds no images; {HOW_TO_GET_DATA}")
        labels = torch.tensor([index[k[1]] for k in keys], dtype=torch.int64)
        try:
            images = decode_images([files[k] for k in keys], image_size, progress=progress,
                                   description=f"decoding {split} images")
        except ImageDecodeError as e:
            bad = "/".join(keys[e.index])
            raise KdpipeError(
                f"cannot decode {bad} in {where} ({e.reason}): the data looks damaged; get a fresh "
                f"copy: {HOW_TO_GET_DATA}"
            ) from None
        tensors[split] = (images, labels)
    return Decoded(*tensors["train"], *tensors["test"], classes=classes)


def find_tree_root(folder: Path) -> Path | None:
    """`folder` if it holds train/ and test/, else its only sub-folder that does, else None."""
    def holds_splits(p: Path) -> bool:
        return all((p / split).is_dir() for split in SPLITS)

    if holds_splits(folder):
        return folder
    found = [p for p in sorted(folder.iterdir()) if p.is_dir() and holds_splits(p)]
    return found[0] if len(found) == 1 else None


class FolderSource:
    """An ImageFolder tree on disk: `root/{train,test}/<class>/<image>`."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listing: list[tuple[Key, Path, os.stat_result]] | None = None

    def describe(self) -> str:
        return f"ImageFolder tree {self.root}"

    def listing(self) -> list[tuple[Key, Path, os.stat_result]]:
        """Every image of both splits, sorted by key, with its path and stat (read once)."""
        if self._listing is None:
            found = []
            for split in SPLITS:
                for class_dir in sorted((self.root / split).iterdir()):
                    if class_dir.is_dir() and not class_dir.name.startswith("."):
                        found += self._class_images(split, class_dir)
            if not found:
                raise KdpipeError(f"{self.root}/train and test hold no images; {HOW_TO_GET_DATA}")
            self._listing = sorted(found, key=lambda item: item[0])
        return self._listing

    @staticmethod
    def _class_images(split: str, class_dir: Path) -> list[tuple[Key, Path, os.stat_result]]:
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if is_image_name(name):
                    path = Path(dirpath, name)
                    rel = path.relative_to(class_dir).as_posix()
                    found.append(((split, class_dir.name, rel), path, path.stat()))
        if not found:
            # An empty class folder would silently shift every later class's label.
            raise KdpipeError(f"{class_dir} holds no images; remove it or add its images")
        return found

    def fingerprint(self) -> str:
        """sha256 of the sorted file list with sizes and modification times (no file is read)."""
        digest = hashlib.sha256()
        for key, _, st in self.listing():
            digest.update(f"{'/'.join(key)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def read(self, image_size: int, progress: bool) -> Decoded:
        files = {key: path.read_bytes() for key, path, _ in self.listing()}
        return decode_tree(files, str(self.root), image_size, progress)


class _CountingReader:
    """A read-only file wrapper that reports how many bytes were read (progress for a stream)."""

    def __init__(self, f: IO[bytes], advance: Callable[[int], None]) -> None:
        self._f = f
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._advance(len(data))
        return data


def _split_position(parts: tuple[str, ...]) -> int | None:
    """Index of the first train/test folder in `parts` that has a class folder and a file below."""
    for k, part in enumerate(parts[:-2]):
        if part in SPLITS:
            return k
    return None


class TarballSource:
    """A .tar/.tar.gz of an ImageFolder tree, read as a stream: nothing is extracted to disk.

    The tree may sit under a top folder (`cifar10/train/...`); where train/ and test/ are is found
    from the member names.
    """

    kind = "tarball"

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"tarball {self.path}"

    def fingerprint(self) -> str:
        """sha256 of the archive file, the same digest `sha256sum` prints."""
        return file_sha256(self.path)

    def read(self, image_size: int, progress: bool) -> Decoded:
        files = self._locate_tree(self._read_members(progress))
        return decode_tree(files, str(self.path), image_size, progress)

    def _read_members(self, progress: bool) -> dict[tuple[str, ...], bytes]:
        """Image files whose path has a train/ or test/ folder, by path components."""
        members: dict[tuple[str, ...], bytes] = {}
        size = self.path.stat().st_size
        try:
            with (
                progress_bar(progress, f"reading {self.path.name}", size) as advance,
                open(self.path, "rb") as raw,
                tarfile.open(fileobj=_CountingReader(raw, advance), mode="r|*") as tar,
            ):
                for member in tar:
                    parts = tuple(p for p in PurePosixPath(member.name).parts
                                  if p not in ("/", ".."))
                    if (member.isfile() and is_image_name(member.name)
                            and not any(p.startswith(".") for p in parts)
                            and _split_position(parts) is not None):
                        members[parts] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise KdpipeError(
                f"cannot read {self.path} as a tar archive ({type(e).__name__}: {e}); it is "
                f"damaged or not a tarball; {HOW_TO_GET_DATA}"
            ) from None
        return members

    def _locate_tree(self, members: dict[tuple[str, ...], bytes]) -> dict[Key, bytes]:
        """The images of the one folder in the archive that holds both train/ and test/."""
        trees: dict[tuple[str, ...], dict[Key, bytes]] = defaultdict(dict)
        for parts, blob in members.items():
            k = _split_position(parts)
            assert k is not None  # _read_members kept only such paths
            trees[parts[:k]][(parts[k], parts[k + 1], "/".join(parts[k + 2 :]))] = blob
        complete = {top: files for top, files in trees.items()
                    if {split for split, _, _ in files} == set(SPLITS)}
        if not complete:
            raise KdpipeError(
                f"{self.path} holds no train/<class>/ and test/<class>/ images; {HOW_TO_GET_DATA}"
            )
        if len(complete) > 1:
            tops = ", ".join("/".join(top) or "(top level)" for top in sorted(complete))
            raise KdpipeError(
                f"{self.path} holds several train/test trees ({tops}); pack only one per archive"
            )
        return next(iter(complete.values()))


# ---------------------------------------------------------------- torchvision's python batches


def _batches(root: Path, download: bool, given: str = "") -> TorchvisionSource:
    """torchvision's layout under `root`, fetched by torchvision first when allowed and missing."""
    source = TorchvisionSource(root / BATCHES_FOLDER)
    if not source.complete():
        if not download:
            reason = f"{given}, and " if given else ""
            raise KdpipeError(
                f"{reason}no CIFAR-10 python batches in {source.folder}; {HOW_TO_GET_DATA}"
            )
        download_cifar10(root)
    return source


def download_cifar10(root: Path) -> None:
    """Let torchvision fetch and verify (md5) CIFAR-10 into `root/cifar-10-batches-py`."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(root), train=True, download=True)
    except Exception as e:  # URLError, OSError, RuntimeError("... corrupted"), ...
        raise KdpipeError(
            f"downloading CIFAR-10 into {root} failed ({type(e).__name__}: {e}); check the "
            f"internet connection, or pass --data PATH to a copy of the data (an ImageFolder "
            f"tree, a .tar.gz of one, or a folder holding {BATCHES_FOLDER})"
        ) from None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses any class except numpy arrays: a file is not code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict[str, object]:
    """A batch file as a dict with str keys (Python 2 pickles need latin1; keys may be bytes)."""
    with open(path, "rb") as f:
        data = _BatchUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict):
        raise ValueError("not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


class TorchvisionSource:
    """CIFAR-10's python version in torchvision's layout: `cifar-10-batches-py/data_batch_1..5`,
    `test_batch`, `batches.meta`. Read directly, without torchvision's md5 check, so that a copy
    re-pickled elsewhere reads too; downloads go through torchvision, which verifies them.
    """

    kind = "batches"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def files(self) -> tuple[str, ...]:
        return (*TRAIN_BATCHES, *TEST_BATCHES, META_FILE)

    def complete(self) -> bool:
        return all((self.folder / name).is_file() for name in self.files)

    def describe(self) -> str:
        return f"CIFAR-10 python batches {self.folder}"

    def fingerprint(self) -> str:
        """sha256 over the names and sha256 digests of the batch files."""
        digest = hashlib.sha256()
        for name in self.files:
            digest.update(f"{name}\t{file_sha256(self.folder / name)}\n".encode())
        return digest.hexdigest()

    def read(self, image_size: int, progress: bool) -> Decoded:
        meta = self._load(META_FILE)
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c)
                        for c in meta.get("label_names", ()))
        if not classes:
            raise self._damaged(META_FILE, "no label_names")
        train = [self._read_batch(name, len(classes)) for name in TRAIN_BATCHES]
        test = [self._read_batch(name, len(classes)) for name in TEST_BATCHES]
        train_images, test_images = (torch.cat([b[0] for b in split]) for split in (train, test))
        return Decoded(
            train_images=resize_images(train_images, image_size),
            train_labels=torch.cat([b[1] for b in train]),
            test_images=resize_images(test_images, image_size),
            test_labels=torch.cat([b[1] for b in test]),
            classes=classes,
        )

    def _read_batch(self, name: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._load(name)
        data = batch.get("data")
        labels = np.asarray(batch.get("labels", []), dtype=np.int64)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * CIFAR_SIZE * CIFAR_SIZE:
            raise self._damaged(name, "its 'data' is not a uint8 array of shape [N, 3072]")
        if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 \
                or labels.max(initial=0) >= num_classes:
            raise self._damaged(name, "its 'labels' do not match its images")
        images = torch.from_numpy(data.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE).copy())
        return images, torch.from_numpy(labels)

    def _load(self, name: str) -> dict[str, object]:
        try:
            return _unpickle(self.folder / name)
        except Exception as e:  # a damaged pickle can raise almost anything
            raise self._damaged(name, f"{type(e).__name__}: {e}") from None

    def _damaged(self, name: str, reason: str) -> KdpipeError:
        return KdpipeError(
            f"{self.folder / name} is not a CIFAR-10 python batch ({reason}); delete "
            f"{self.folder} and run again with --download, or {HOW_TO_GET_DATA}"
        )
