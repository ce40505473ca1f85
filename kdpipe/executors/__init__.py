"""Where a sweep's cells and a pipeline's stages run: one after another here (`local`), or as
tasks on a Ray cluster.

An executor takes the items still to run and a function that runs one item (in its own folder,
resuming where it stopped), and returns, per item, None for success or the error text. It owns
nothing else: the items' names, settings, skip rules and report stay the sweep's or the
pipeline's, so the report is the same whichever executor ran it.

    EXECUTORS.get("ray")(address=None).run(cells, run_cell)

Adding one (Dask, Slurm, ...) is one module with one `@EXECUTORS.register` class.
"""

from kdpipe.executors import local, ray_executor  # noqa: F401  (each registers its executor)
from kdpipe.executors.base import (
    EXECUTORS,
    Executor,
    Resources,
    Work,
    ordered_by_cache,
    record_placement,
    teacher_cache_key,
)

__all__ = ["EXECUTORS", "Executor", "Resources", "Work", "ordered_by_cache", "record_placement",
           "teacher_cache_key"]
