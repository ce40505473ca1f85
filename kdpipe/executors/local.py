"""The default executor: the items (sweep cells, pipeline stages) one after another in this
process (no Ray needed)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from kdpipe import atomic
from kdpipe.executors.base import EXECUTORS, Work, record_placement
from kdpipe.progress import console


@EXECUTORS.register("local")
class LocalExecutor:
    name = "local"

    def __init__(self, **_: Any) -> None:
        pass

    def run(self, work: list[Work], run_cell: Callable[[Any], None],
            on_done: Callable[[str], None] | None = None) -> dict[str, str | None]:
        """Items in order; a failed item is recorded (error.txt) and the others go on. Ctrl-C
        stops here (a running training keeps its last.pt)."""
        outcome: dict[str, str | None] = {}
        for i, item in enumerate(work, 1):
            console.print(f"[bold]{i}/{len(work)}: {item.name}[/]")
            try:
                run_cell(item.cell)
                record_placement(item.folder / item.record, self.name)
                outcome[item.name] = None
            except Exception as e:  # one broken item must not cost the night's others
                outcome[item.name] = f"{type(e).__name__}: {e}"
                atomic.write_text(item.folder / "error.txt", traceback.format_exc())
                console.print(f"[red]{item.name} failed:[/] {e}")
            if on_done is not None:
                on_done(item.name)
        return outcome
