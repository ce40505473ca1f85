"""One process per folder: a lock held for a run's whole lifetime (run, sweep or pipeline folders).

    with hold(folder):           # or: lock = acquire(folder); ...; lock.release()
        ...

The lock is an exclusive `flock` on `<folder>/kdpipe.lock`, a file that also records the holder's
process id and host. The kernel drops a flock when its process ends, however it ends (kill -9
included), so a lock file left behind by a dead run holds no lock: the next run takes it over and
says so. A second live process is refused with a `KdpipeError` naming the folder and the holder.
Holding is re-entrant within one process, so `distill` can hold its folder while its `Trainer`
runs there. The file is removed on release.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdpipe.errors import KdpipeError
from kdpipe.progress import console

LOCK_NAME = "kdpipe.lock"


@dataclass
class RunLock:
    """A held folder lock; `release()` once per `acquire()`."""

    folder: Path
    fd: int
    depth: int = 1
    created: tuple[Path, ...] = ()  # folders acquire made, removed on release if still empty

    def release(self) -> None:
        """Drop one hold; the last one unlocks and removes the lock file."""
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(self.folder, None)
        if sys.platform == "win32":  # an open file cannot be unlinked there
            os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.folder / LOCK_NAME)
            return
        # Unlinked while still locked: a process waiting on this inode sees it vanish and retries
        # on a fresh file, so two processes never both believe they hold the folder.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / LOCK_NAME)
        os.close(self.fd)
        self._remove_empty_folders()

    def _remove_empty_folders(self) -> None:
        """A run refused before it wrote anything leaves no trace of the folder it would use."""
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there), or already gone
                return


_HELD: dict[Path, RunLock] = {}


def acquire(folder: str | os.PathLike[str], *, purpose: str = "--out") -> RunLock:
    """Lock `folder` (created if missing) for this process, or raise a `KdpipeError` naming the
    live holder; a lock file of a process that is gone is taken over with a message.

    `purpose` names the option that chose the folder, for the message ("use another --out").
    """
    folder = Path(folder)
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key].depth += 1
        return _HELD[key]
    path = key / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise KdpipeError(
                f"{folder} is in use by {_describe(holder)} ({path}); one run per folder: wait "
                f"for it to finish, stop it, or use another {purpose}"
            )
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file as we locked it: lock the new one
    stale = _read_holder(fd)
    if stale:
        console.print(f"{folder}: taking over the stale lock of {_describe(stale)}, which is "
                      "no longer running", soft_wrap=True, highlight=False)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    _HELD[key] = lock = RunLock(key, fd, created=tuple(f.resolve() for f in missing))
    return lock


@contextlib.contextmanager
def hold(folder: str | os.PathLike[str], *, purpose: str = "--out") -> Iterator[RunLock]:
    """`acquire(folder)` for the body of a `with` block."""
    lock = acquire(folder, purpose=purpose)
    try:
        yield lock
    finally:
        lock.release()


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the whole of `fd`; False if another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):  # half-written by a process that died writing it, or locked
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "another process (which has not recorded its process id yet)"
    host = holder.get("host")
    where = "" if host == socket.gethostname() else f" on host {host}"
    return f"process {holder['pid']}{where}"
