"""Sweep cells and pipeline stages as Ray tasks: in parallel on a many-core box or a cluster.

Without an address, `ray.init` starts a local Ray instance (testable on one machine); with one
(`--ray-address auto` or `ray://host:10001`) it joins a running cluster. Each item is one task
with the resources the sweep file's or the pipeline config's `[resources]` table asks
(`num_cpus`, default 1; `num_gpus`, default 0: one GPU per task on a GPU cluster).

Storage: an item writes its folder (checkpoints, metrics, summary, artifacts) and reads the
teacher cache by path, so every node must see the sweep or pipeline folder at the same path (a
shared filesystem: NFS, Lustre, a mounted bucket). A cluster of more than one node is refused
unless the user says the folder is shared (`--shared-storage`), since results written to a
worker's local disk would be lost.

Faults: a task whose worker dies (killed process, lost node) is retried by Ray (`max_retries`),
and the retried item resumes where it stopped (a training from its last epoch checkpoint, an
export stage from its `done.json`), like a rerun of the sweep or pipeline.

Teacher cache: an item that reads the cache another item fills (same seed, same cache folder)
runs after that item: its task takes the first one's result as an argument, which Ray resolves
before starting it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdpipe import atomic
from kdpipe.errors import KdpipeError
from kdpipe.executors.base import EXECUTORS, Work, record_placement
from kdpipe.progress import console

MAX_RETRIES = 3  # worker deaths survived per cell; each retry resumes from last.pt
INSTALL_HINT = "pip install 'kdpipe[ray]'"


def _run_task(run_cell: Callable[[Any], None], cell: Any, folder: str, record: str, cwd: str,
              *_after: Any) -> str | None:
    """The task body on a worker: run the item where the driver runs (relative paths hold),
    record where it ran; an error comes back as text (the sweep or pipeline reports it, Ray does
    not retry it: an item that raises would raise again)."""
    import ray

    os.chdir(cwd)
    started = time.time()
    try:
        run_cell(cell)
    except Exception as e:  # noqa: BLE001 - reported per item, as the local executor does
        atomic.write_text(Path(folder) / "error.txt", traceback.format_exc())
        return f"{type(e).__name__}: {e}"
    context = ray.get_runtime_context()
    record_placement(Path(folder) / record, "ray", node_id=context.get_node_id(),
                     task_id=context.get_task_id(), started_s=started, finished_s=time.time())
    return None


@EXECUTORS.register("ray")
class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 shared_storage: bool = False, local_cpus: int | None = None, **_: Any) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise KdpipeError(f"--executor ray needs Ray: {INSTALL_HINT}") from None
        self.address = address
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": MAX_RETRIES}
        self.shared_storage = shared_storage
        self.local_cpus = local_cpus

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.local_cpus or os.cpu_count()
            ray.init(**kwargs)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and not self.shared_storage:
            raise KdpipeError(
                f"this Ray cluster has {len(nodes)} nodes: every task writes its folder by path, "
                "so the sweep or pipeline folder must be on a filesystem every node mounts at "
                "the same path (NFS, Lustre, a mounted bucket); pass --shared-storage to "
                "confirm it is")

    def run(self, work: list[Work], run_cell: Callable[[Any], None],
            on_done: Callable[[str], None] | None = None) -> dict[str, str | None]:
        import ray

        if not work:  # nothing to run: no Ray instance to start or join
            return {}
        self._connect()
        task = ray.remote(_run_task).options(**self.options)
        cwd = str(Path.cwd())
        refs: dict[str, Any] = {}
        for item in work:  # in order: an item's `after` is submitted before it
            after = [refs[item.after]] if item.after in refs else []
            refs[item.name] = task.remote(run_cell, item.cell, str(item.folder), item.record,
                                          cwd, *after)
        console.print(f"ray: {len(work)} tasks submitted ({self.options['num_cpus']} CPU, "
                      f"{self.options['num_gpus']} GPU each)", highlight=False)
        outcome: dict[str, str | None] = {}
        names = {ref: name for name, ref in refs.items()}
        pending = list(refs.values())
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name = names[ready[0]]
            try:
                outcome[name] = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # retries used up: the worker kept dying
                outcome[name] = f"{type(e).__name__}: {e}"
            console.print(f"{name}: {'done' if outcome[name] is None else 'failed'}",
                          highlight=False)
            if on_done is not None:
                on_done(name)
        return outcome
