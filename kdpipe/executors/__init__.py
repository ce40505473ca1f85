"""Where a sweep's cells run: one after another here (`local`), or as tasks on a Ray cluster.

An executor takes the cells still to run and a function that runs one cell (in its own folder,
resuming from its `last.pt`), and returns, per cell, None for success or the error text. It owns
nothing else: the cells' names, settings, skip rules and report stay the sweep's, so the report is
the same whichever executor ran it.

    EXECUTORS.get("ray")(address=None).run(cells, run_cell)

Adding one (Dask, Slurm, ...) is one module with one `@EXECUTORS.register` class.
"""

from kdpipe.executors import local, ray_executor  # noqa: F401  (each registers its executor)
from kdpipe.executors.base import EXECUTORS, Executor, Work, record_placement

__all__ = ["EXECUTORS", "Executor", "Work", "record_placement"]
