"""`kdpipe bench`'s configuration: one dataclass filled by its flags and config files alike.

Kept apart from `bench.py` so that the CLI can build it without importing the runtimes, the
report writers or PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdpipe.config import IMPORT_HELP, option
from kdpipe.errors import KdpipeError
from kdpipe.report.recommend import ShipLimits
from kdpipe.runtime.latency import (
    DEFAULT_ITERS,
    DEFAULT_MIN_TIME_S,
    DEFAULT_WARMUP,
    MIN_TIMED_CALLS,
)


@dataclass
class BenchConfig(ShipLimits):
    """Everything that decides a bench. Flags of `kdpipe bench` and config files fill it alike;
    the limits on what the report recommends come from `ShipLimits`."""

    # what to measure
    batch_sizes: list[int] = option(help="comma-separated batch sizes to time, e.g. 1,32",
                                    factory=lambda: [1, 32])
    runtimes: list[str] = option(help="only these runtimes [default: every runtime that runs "
                                 "each file's format]", factory=list)
    accuracy: bool = option(True, "measure top-1 on the test set")
    memory: bool = option(True, "measure peak RSS in a fresh subprocess per artifact")
    # the latency protocol (docs/latency-protocol.md)
    threads: int | None = option(None, "CPU threads for every runtime [default: the CPUs this "
                                 "process may use]")
    warmup: int = option(DEFAULT_WARMUP, "untimed calls before timing")
    iters: int = option(DEFAULT_ITERS, "timed calls per batch size (at least)")
    min_time_s: float = option(DEFAULT_MIN_TIME_S, "keep timing a batch size until its timed "
                               "calls add up to this many seconds (steadier p50s on a busy "
                               "machine; 0 = exactly --iters calls)")
    time_budget_s: float | None = option(None, "stop timing a batch size after this many seconds "
                                         f"(at least {MIN_TIMED_CALLS} calls)")
    # A checkpoint of a model registered from user code needs that code here and in the memory
    # subprocess; where the code comes from does not change a number.
    imports: list[str] = option(help=IMPORT_HELP, factory=list, result=False, flag="import")
    # test data (as for `kdpipe train`)
    data: str | None = option(None, "ImageFolder tree, .tar(.gz) of one, or cifar-10-batches-py "
                              "folder [default: ../shared/datasets/cifar10-images.tar.gz if "
                              "present]")
    download: bool = option(False, "let torchvision download CIFAR-10 into --data")
    cache_dir: str | None = option(None, "uint8 image cache [default: $KDPIPE_CACHE or "
                                   "~/.cache/kdpipe]", result=False)
    limit_test: int | None = option(None, "top-1 on a stratified subset of N test images")
    # where
    device: str = option("local", "local, or ssh://user@host[:port] for a phone or board")
    ssh_key: str | None = option(None, "identity file for ssh:// (ssh -i)")
    ssh_options: list[str] = option(help="extra ssh -o options for ssh://, e.g. "
                                    "UserKnownHostsFile=/tmp/known_hosts", factory=list)
    remote_python: str = option("python3", "Python on the ssh:// device (needs numpy and "
                                "onnxruntime or executorch)")
    remote_accuracy: int = option(0, "ship N test images to the ssh:// device for top-1 "
                                  "[default: latency only]")
    connect_timeout_s: int = option(10, "ssh connect timeout in seconds")
    remote_timeout_s: float = option(1800.0, "limit for one command on the ssh:// device, seconds")
    # output
    out: str = option("runs/bench", "folder for bench.md, bench.json and bench.png",
                      result=False)
    progress: bool = option(True, "show a progress bar", result=False)

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise KdpipeError(f"batch sizes must be positive integers like 1,32; got "
                              f"{self.batch_sizes}")
        for name in ("warmup", "remote_accuracy", "min_time_s"):
            if getattr(self, name) < 0:
                raise KdpipeError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("iters", "threads", "connect_timeout_s"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise KdpipeError(f"{name} must be 1 or more, got {value}")
