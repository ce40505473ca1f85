"""One look for every progress bar in kdpipe (rich), off when asked or when not on a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich `Progress` with a description, a bar, counts, times and a free-text `info` field.

    Disabled (renders nothing) when `enabled` is false or stderr is not a terminal, so logs in CI
    and files stay clean; the per-epoch lines are printed separately.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not (enabled and sys.stderr.isatty()),
        transient=True,
    )
