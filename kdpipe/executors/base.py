"""The executor interface, the order rule for cached teachers, and what every executor records
in a finished item's summary."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from kdpipe import atomic
from kdpipe.config import option
from kdpipe.registry import Registry


@dataclass(frozen=True)
class Work:
    """One item to run (a sweep cell, a pipeline stage): its name, its folder, and the item
    itself (opaque to the executor).

    `after` names the item that must finish first: the one filling the teacher cache this item
    reads, so no two workers compute the same teacher outputs or read them half-written.
    `record` is the JSON file in `folder` that gets which executor and node ran the item (a
    training run's summary.json; an export stage, which has none, its stage.json).
    """

    name: str
    folder: Path
    cell: Any
    after: str | None = None
    record: str = "summary.json"


class Executor(Protocol):
    """Runs items; returns {item name: None if it finished, else the error text}."""

    name: str

    def run(self, work: list[Work], run_cell: Callable[[Any], None],
            on_done: Callable[[str], None] | None = None) -> dict[str, str | None]: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@dataclass
class Resources:
    """What one task reserves on a Ray node (the local executor ignores it)."""

    num_cpus: float = option(1, "CPUs per task")
    num_gpus: float = option(0, "GPUs per task: 1 to train on a GPU cluster's GPUs (Ray hides "
                             "the GPUs from a task that asks for none)")


def ordered_by_cache(work: list[Work],
                     cache_of: Callable[[Any], Hashable | None]) -> list[Work]:
    """`work` in the same order, each item that reads a cache an earlier item fills set to run
    after that one. `cache_of(item.cell)` names the cache an item reads and fills (None: none)."""
    fillers: dict[Hashable, str] = {}
    planned = []
    for item in work:
        key = cache_of(item.cell)
        if key is None:
            planned.append(item)
            continue
        planned.append(replace(item, after=fillers.get(key, item.after)))
        fillers.setdefault(key, item.name)
    return planned


def teacher_cache_key(config: Any) -> tuple[str, int] | None:
    """The teacher cache a distill config fills or reads (its folder and seed), None for a run
    that keeps none or needs no teacher (a baseline, `scratch`)."""
    from kdpipe.train.methods import needs_teacher

    cache, method = getattr(config, "teacher_cache", None), getattr(config, "method", None)
    if not cache or method is None or not needs_teacher(method):
        return None
    return str(cache), config.seed


def record_placement(path: Path, executor: str, **where: Any) -> None:
    """Add to the record `path` (a summary.json, a stage.json) which executor and node ran it."""
    if not path.exists():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary.update(executor=executor, node=socket.gethostname(), **where)
    atomic.write_json(path, summary)
