"""kdpipe's console: one look for every progress bar (rich), off when asked, plain lines off a
terminal; and counted nouns ("1 epoch", "2 threads")."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

PLAIN_INTERVAL_S = 30.0  # off a terminal: one progress line at most this often


class PlainProgress(Progress):
    """A `Progress` that draws no bar but prints one plain line (`epoch 3/8: 120/390 ...`) every
    `interval_s`, for output redirected to a file or a CI log: a bar would be rewritten in place,
    which a file cannot show, and silence for minutes looks like a hang."""

    def __init__(self, *args: Any, interval_s: float = PLAIN_INTERVAL_S, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})
        self.interval_s = interval_s
        self._last = time.monotonic()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        task = self._tasks[task_id]
        total = f"/{task.total:.0f}" if task.total is not None else ""
        elapsed = time.strftime("%H:%M:%S", time.gmtime(task.elapsed or 0))
        info = task.fields.get("info", "")
        console.print(f"{task.description}: {task.completed:.0f}{total} ({elapsed} elapsed)"
                      + (f"  {info}" if info else ""), highlight=False)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich `Progress` with a description, a bar, counts, times and a free-text `info` field.

    Disabled (renders nothing) when `enabled` is false. When stderr is not a terminal it prints a
    plain progress line every `PLAIN_INTERVAL_S` instead of a bar (`PlainProgress`).
    """
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    # The console's own file, not sys.stderr: while third-party output is captured (kdpipe.quiet)
    # sys.stderr is a file, but the console still writes to the terminal.
    if enabled and not _isatty(console.file):
        return PlainProgress(*columns, console=console, transient=True)
    return Progress(*columns, console=console, disable=not enabled, transient=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def plural(count: int | float | str, noun: str) -> str:
    """`1 epoch`, `2 epochs`, `? threads`: the count and the noun, plural unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
