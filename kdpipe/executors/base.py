"""The executor interface and what every executor records in a finished cell's summary."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kdpipe import atomic
from kdpipe.registry import Registry


@dataclass(frozen=True)
class Work:
    """One cell to run: its name, its folder, and the cell (opaque to the executor).

    `after` names the cell that must finish first: the one filling the teacher cache this cell
    reads, so no two workers compute the same teacher outputs or read them half-written.
    """

    name: str
    folder: Path
    cell: Any
    after: str | None = None


class Executor(Protocol):
    """Runs cells; returns {cell name: None if it finished, else the error text}."""

    name: str

    def run(self, work: list[Work], run_cell: Callable[[Any], None]) -> dict[str, str | None]: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


def record_placement(folder: Path, executor: str, **where: Any) -> None:
    """Add to the cell's summary.json which executor and which node ran it."""
    path = folder / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary.update(executor=executor, node=socket.gethostname(), **where)
    atomic.write_json(path, summary)
