"""Atomic writes: a reader (or a crash) never sees a half-written file.

Everything is written to a temporary file in the destination's folder, flushed, then renamed over
the destination; `os.replace` is atomic on POSIX and Windows within one file system.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed to `dest`, else removed.

    Works for files and for folders (e.g. a Core ML `.mlpackage`): whatever the body creates at the
    yielded path replaces `dest` in one rename.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent
        )
    except OSError as e:  # name the file the user asked for, not the hidden temporary one
        raise _naming(e, dest) from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the body decides whether it is a file or a folder
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno is None or (e.filename not in (None, str(tmp))):
            raise
        # A write into the temporary file (`f.write` names no file): say which file it was.
        raise _naming(e, dest) from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _naming(error: OSError, dest: Path) -> OSError:
    """`error` with `dest` as its file name (`OSError(errno, ...)` keeps the subclass)."""
    if error.errno is None or error.filename == str(dest):
        return error
    return OSError(error.errno, error.strerror, str(dest))


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def torch_save(dest: str | os.PathLike[str], obj: Any) -> None:
    """`torch.save` through a temporary file, so an interrupted save keeps the last good one.

    A failed write is an `OSError` naming `dest` (torch's own error says only "file write
    failed" or "unexpected pos"), so callers and the CLI handle it like any other write error.
    """
    import torch  # here, not at the top: `kdpipe --help` imports this module

    with atomic_path(dest) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # Checked here, before atomic_path removes the partial file and frees its space.
            failure = write_failure(e, dest)
            if failure is None:
                raise
            raise failure from e


# torch.save's C++ writer (caffe2/serialize/inline_container.cc) reports failed writes as a
# RuntimeError without the errno; these are the phrases of its write errors.
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "unexpected pos",
                       "file write failed")


def disk_is_full(folder: str | os.PathLike[str]) -> bool:
    """True when the file system of `folder` has (almost) no room left: a write that failed
    there failed for want of space, whatever the library that wrote it said."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    # A write that runs out of room fills the disk to its last block; 1 MiB (or 5% of a small
    # disk) left means it was full, while a disk with more room failed for another reason.
    return usage.free < min(1 << 20, usage.total // 20)


def write_failure(error: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The `OSError` behind a failed write to `path`, or None when `error` is not one.

    `ENOSPC` naming `path` when the disk of `path` is full, whatever `error` says (protobuf's
    "Wire format was corrupt" when a library reads back the truncated file it just wrote);
    else an `OSError` that `error` is or was raised from; else, for torch's stream writer
    (which drops the errno), `EIO` with torch's words.
    """
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if disk_is_full(folder):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:  # a chain can loop back on itself
        chain.append(seen)
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen if seen.filename is not None else _naming(seen, Path(path))
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and any(p in str(error) for p in _TORCH_WRITE_ERRORS):
        return OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({error})", str(path))
    return None


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line; a line is small enough that the append is effectively atomic."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
