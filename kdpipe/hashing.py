"""sha256 fingerprints of files and folders: checkpoints, data archives, artifacts, stage inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file. Of a folder (`.mlpackage`): the sha256 of the sorted lines
    `relative/posix/path \\0 file-sha256 \\n` (no spaces) of its files, so the folder has one
    fingerprint that changes when any file in it does."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    lines = [
        f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n"
        for p in sorted(path.rglob("*")) if p.is_file()
    ]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
