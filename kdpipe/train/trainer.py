"""The training loop: one `Trainer` for scratch baselines and every distillation method.

A recipe in the torchtune manner: `setup()` builds loaders, optimizer and schedule (and restores a
checkpoint on resume), `fit()` runs the epochs, `save_checkpoint()` writes atomically. What is
minimised is an `Objective`; the trainer never looks inside it.

Files in the run folder (`config.out`):
    config.json     the resolved configuration
    kdpipe.lock     held while the run is going (`kdpipe.runlock`): one run per folder
    last.pt         student + trainer state, rewritten atomically after every epoch (and on Ctrl-C)
    metrics.jsonl   one JSON line per epoch; last.pt holds the same rows, and on resume the file
                    is rewritten from them, so a kill at any moment leaves one row per epoch
    model.pt        the final student checkpoint (what `kdpipe eval` and `kdpipe export` take)
                    last.pt and model.pt of a `--qat` run also hold the learned INT8 activation
                    ranges beside the FP32 weights (`kdpipe.train.qat.checkpoint_parts`)
    summary.json    top-1, params, MACs, wall time, images/s, device, versions, git commit
                    (`kdpipe.report.records.TrainSummary`)

Ctrl-C is taken between two steps: the signal only sets a flag, which the loop reads before each
step and after each epoch; then last.pt is saved and `KeyboardInterrupt` raised. A step cut short
would already have moved BatchNorm's running statistics for a batch that resume trains again, so
the resumed run would differ from an uninterrupted one; taken at a boundary it is bit-identical
on CPU. A second Ctrl-C stops at once, leaving last.pt at its last save.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from rich.progress import Progress, TaskID
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdpipe import atomic, runlock
from kdpipe.config import results_only, to_dict
from kdpipe.data import Dataset, Loader, make_loader
from kdpipe.errors import KdpipeError
from kdpipe.models import CheckpointMeta, count_macs, count_params, read_checkpoint, save_checkpoint
from kdpipe.progress import console, progress_bar
from kdpipe.report.records import TrainSummary
from kdpipe.runinfo import environment
from kdpipe.train import distributed
from kdpipe.train.config import TrainConfig
from kdpipe.train.device import resolve_device
from kdpipe.train.divergence import run_warnings
from kdpipe.train.evaluate import evaluate
from kdpipe.train.precision import precision_name, uses_bf16
from kdpipe.train.qat import checkpoint_parts, restore_student
from kdpipe.train.schedule import make_scheduler
from kdpipe.train.trainer_objective import Objective, StepOutput

__all__ = ["Trainer", "hold_run_folder", "resolve_device", "seed_everything"]

def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and `random`: every command calls this before it builds a
    model, so one seed gives one initialisation in `kdpipe train`, `distill` and a sweep."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def hold_run_folder(out: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Any]:
    """Lock the run folder `out` for a `with` block (`kdpipe.runlock`); in a torchrun job only the
    main process holds it, since the other ranks share its folder."""
    if distributed.from_environment().is_main:
        return runlock.hold(out)
    return contextlib.nullcontext()


class _StopAtBoundary(KeyboardInterrupt):
    """Ctrl-C, taken between two steps: the run saves last.pt there and stops."""


class _AbortNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, mid-step maybe, so last.pt is left as it was."""


@dataclass
class EpochStats:
    """Running sums over one epoch, saved with a mid-epoch checkpoint so resume loses nothing."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    batches: int = 0
    train_time: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, correct: int, n: int, parts: dict[str, float]) -> None:
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n
        self.batches += 1
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v * n

    def summary(self) -> dict[str, float]:
        n = max(self.seen, 1)
        out = {"train_loss": self.loss_sum / n, "train_top1": 100.0 * self.correct / n}
        out.update({f"train_{k}": v / n for k, v in self.parts.items()})
        return out


class Trainer:
    """Trains `objective.student` on `dataset` according to `config`; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        objective: Objective,
        dataset: Dataset,
        *,
        resume: bool = False,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.objective = objective
        self.dataset = dataset
        self.resume = resume
        self.record = record or {}  # extra facts for config.json/summary.json (method, teacher...)
        self.out = Path(config.out)
        self.dist = distributed.from_environment()
        self.device = resolve_device(config.device)
        self.bf16 = uses_bf16(config.amp, self.device)
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # batches of `self.epoch` already trained (mid-epoch resume)
        self.stats = EpochStats()
        self.elapsed = 0.0  # wall time over all sessions of this run
        self.train_time = 0.0  # time spent in training steps over all sessions
        self.train_images = 0
        self.history: list[dict[str, Any]] = []  # the metrics rows of the completed epochs
        self.saved_at = (0, 0)  # (epoch, batch) that last.pt holds
        self.stop_requested = False  # set by Ctrl-C, read at step boundaries
        self._lock: runlock.RunLock | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Lock the run folder (until `fit` ends), then build loader, optimizer and schedule."""
        if self.dist.is_main:
            self._lock = runlock.acquire(self.out)
        try:
            self._build()
        except BaseException:
            self._release_lock()
            raise

    def _build(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        distributed.init(self.dist, self.device)
        self._check_run_folder()
        self.objective.to(self.device)
        if cfg.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        mean, std = self.mean_std
        self.loader: Loader = make_loader(
            cfg.loader,
            self.dataset.train_images,
            self.dataset.train_labels,
            batch_size=cfg.batch_size,
            train=True,
            mean=mean,
            std=std,
            device=self.device,
            seed=cfg.seed,
            channels_last=cfg.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=cfg.num_workers,  # the reference loader's; the tensor loader has none
        )
        if len(self.loader) == 0:
            raise KdpipeError(
                f"the training set ({self.dataset.train_labels.numel()} images) is smaller than "
                f"one "
                f"batch of {cfg.batch_size} per process; lower --batch-size or raise --limit-train"
            )
        params = list(self.objective.trainable_parameters())
        self.optimizer = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
        steps = cfg.epochs * len(self.loader)
        warmup = math.ceil(cfg.warmup_epochs * len(self.loader))
        self.scheduler = make_scheduler(
            self.optimizer, steps, warmup, cfg.schedule, cfg.milestones, cfg.gamma
        )
        if self.resume and (self.out / "last.pt").exists():
            self._load_trainer_state()
        if self.dist.is_main:  # rows of epochs that last.pt does not hold go (a fresh run: all)
            atomic.write_text(self.out / "metrics.jsonl",
                              "".join(json.dumps(r, default=str) + "\n" for r in self.history))
        self.step_module: nn.Module = self.objective
        if self.dist.enabled:
            self.step_module = DistributedDataParallel(
                self.objective,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        if cfg.compile:
            self.step_module = torch.compile(self.step_module)
        if self.dist.is_main:
            atomic.write_json(self.out / "config.json", {**self.record, "config": to_dict(cfg)})

    @property
    def mean_std(self) -> tuple[list[float], list[float]]:
        from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD

        return list(CIFAR10_MEAN), list(CIFAR10_STD)

    def _check_run_folder(self) -> None:
        last = self.out / "last.pt"
        if last.exists() and not self.resume:
            raise KdpipeError(
                f"{self.out} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.resume and last.exists():
            saved = json.loads((self.out / "config.json").read_text())["config"]
            now = results_only(self.config)
            # An option missing from the saved config was added to kdpipe after the run began;
            # at its default it changes nothing.
            defaults = to_dict(type(self.config)())
            changed = sorted(k for k in now if saved.get(k, defaults.get(k)) != now[k])
            if changed:
                raise KdpipeError(
                    f"--resume would change {', '.join(changed)} of the run in {self.out}; "
                    "resume with the same settings or start a new --out"
                )

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary (also written to summary.json)."""
        try:
            self._train_epochs()
            return self._finish()
        finally:
            self._release_lock()

    def _train_epochs(self) -> None:
        started = time.perf_counter() - self.elapsed
        cfg = self.config
        self.stop_requested = False
        try:
            with (self._ctrl_c_between_steps(),
                  progress_bar(cfg.progress and self.dist.is_main) as bar):
                task = bar.add_task(
                    f"epoch {self.epoch + 1}/{cfg.epochs}", total=len(self.loader), info=""
                )
                while self.epoch < cfg.epochs:
                    bar.reset(
                        task,
                        total=len(self.loader),
                        description=f"epoch {self.epoch + 1}/{cfg.epochs}",
                    )
                    self._train_epoch(bar, task)
                    self._check_stop()
                    self.elapsed = time.perf_counter() - started
                    self._end_epoch()
                    self._check_stop()
        except KeyboardInterrupt as e:
            # "interrupted" itself is the CLI's word (kdpipe.cliutil), printed once.
            self.elapsed = time.perf_counter() - started
            if self.dist.is_main and isinstance(e, _AbortNow):
                epoch, batch = self.saved_at
                console.print(f"not saved: --resume continues from {self.out / 'last.pt'} at "
                              f"epoch {epoch + 1}, batch {batch}")
            elif self.dist.is_main:
                self.save_checkpoint()
                console.print(f"saved {self.out / 'last.pt'} at epoch {self.epoch + 1}, batch "
                              f"{self.batch_in_epoch}; continue with --resume")
            raise

    @contextlib.contextmanager
    def _ctrl_c_between_steps(self) -> Iterator[None]:
        """While training, Ctrl-C (SIGINT) sets `stop_requested` instead of raising mid-step."""
        if threading.current_thread() is not threading.main_thread():
            yield  # Python runs signal handlers in the main thread only: nothing to defer
            return

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise _AbortNow
            self.stop_requested = True
            # os.write, not print: a handler may run inside a print to the same stream.
            with contextlib.suppress(OSError):
                os.write(2, b"Ctrl-C: stopping after this step; press it again to stop at once "
                            b"without saving\n")

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _check_stop(self) -> None:
        """At a step boundary: stop if Ctrl-C was pressed, in any process of a torchrun job (all
        must stop at the same step, or the others would wait in the next all-reduce forever)."""
        stop = self.stop_requested
        if self.dist.enabled:
            flag = torch.tensor([float(stop)], device=self.device)
            stop = distributed.all_reduce_sum(flag, self.dist).item() > 0
        if stop:
            raise _StopAtBoundary

    def _train_epoch(self, bar: Progress, task: TaskID) -> None:
        self.objective.train()
        self.objective.start_epoch(self.epoch)
        self.loader.set_epoch(self.epoch)
        tick = time.perf_counter()
        for i, (images, labels) in enumerate(self.loader):
            if i < self.batch_in_epoch:  # resumed mid-epoch: the order is a function of the epoch
                continue
            self._check_stop()
            start_step = getattr(self.objective, "start_step", None)
            if start_step is not None:  # losses that follow the schedule (DKD's warm-up)
                start_step(self.epoch + i / len(self.loader))
            out = self._step(images, labels)
            self.batch_in_epoch = i + 1
            now = time.perf_counter()
            self.stats.train_time += now - tick
            self.train_time += now - tick
            self.train_images += labels.numel() * self.dist.world_size
            correct = (out.logits.detach().argmax(1) == labels).sum().item()
            self.stats.add(
                out.loss.item(),
                correct,
                labels.numel(),
                {k: v.item() for k, v in out.parts.items()},
            )
            rate = self.stats.seen * self.dist.world_size / max(self.stats.train_time, 1e-9)
            bar.update(
                task,
                completed=i + 1,
                info=(
                    f"loss {self.stats.loss_sum / self.stats.seen:.3f}  "
                    f"acc {100 * self.stats.correct / self.stats.seen:.1f}%  {rate:.0f} img/s"
                ),
            )
            tick = time.perf_counter()

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.step_module(images, labels)
        if not torch.isfinite(out.loss):
            raise KdpipeError(
                f"the loss became {out.loss.item()} at epoch {self.epoch + 1}; "
                "lower --lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return out

    def _end_epoch(self) -> None:
        # The row (evaluation included) is made before any state moves on, so an interruption
        # inside it saves the epoch as trained but not yet logged, and resume logs it.
        row = self._epoch_row() if self.dist.is_main else {}
        self.epoch += 1
        self.batch_in_epoch = 0
        self.stats = EpochStats()
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return
        self.history.append(row)
        self.last_row = row
        # last.pt (holding every row) first: a run killed before the append gets the row back
        # from it on resume, and one killed before last.pt has neither.
        self.save_checkpoint()
        atomic.append_jsonl(self.out / "metrics.jsonl", row)
        console.print(
            escape(f"[{self.run_name}] ") +
            f"epoch {self.epoch}/{self.config.epochs}  loss {row['train_loss']:.3f}  "
            f"train {row['train_top1']:.1f}%  test {row['test_top1']:.2f}%  "
            f"{row['images_per_s']:.0f} img/s"
        )
        # Only the warnings this epoch added: a diverging run is said once per kind, not per epoch.
        seen = run_warnings(self.history[:-1], self.compare_test)
        for kind, message in run_warnings(self.history, self.compare_test).items():
            if kind not in seen:
                console.print(f"[bold yellow]warning:[/] {escape(f'[{self.run_name}] {message}')}")
        distributed.barrier(self.dist)

    @property
    def run_name(self) -> str:
        """What the console lines name the run by: its folder (`kd`; `fitnets/stage1`)."""
        stage = "stage" in self.record
        return f"{self.out.parent.name}/{self.out.name}" if stage else self.out.name

    @property
    def compare_test(self) -> bool:
        # A prior stage's loss (FitNets' hint MSE) is not the test loss's kind: not comparable.
        return "stage" not in self.record

    def _epoch_row(self) -> dict[str, Any]:
        stats = self.stats
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update(stats.summary())
        row["images_per_s"] = stats.seen * self.dist.world_size / max(stats.train_time, 1e-9)
        row.update({f"test_{k}": v for k, v in self._evaluate("test").items() if k != "n"})
        if self.dataset.val_images is not None:
            row.update({f"val_{k}": v for k, v in self._evaluate("val").items() if k != "n"})
        row["elapsed_s"] = self.elapsed
        return row

    def _evaluate(self, split: str) -> dict[str, float]:
        images = getattr(self.dataset, f"{split}_images")
        labels = getattr(self.dataset, f"{split}_labels")
        mean, std = self.mean_std
        return evaluate(
            self.objective.student,
            images,
            labels,
            mean,
            std,
            device=self.device,
            channels_last=self.config.channels_last,
        )

    # ------------------------------------------------------------------ checkpoints
    def meta(self, metrics: dict[str, Any] | None = None) -> CheckpointMeta:
        """The checkpoint metadata of the student being trained."""
        mean, std = self.mean_std
        images = self.dataset.train_images
        return CheckpointMeta(
            model=self.config.model,
            model_kwargs=dict(self.config.model_kwargs),
            num_classes=len(self.dataset.classes),
            classes=list(self.dataset.classes),
            mean=mean,
            std=std,
            input_shape=list(images.shape[1:]),
            metrics=metrics or {},
            config={**self.record, **to_dict(self.config)},
        )

    def save_checkpoint(self) -> None:
        """Student + all needed to continue exactly: optimizer, schedule, position, extras."""
        student_keys = {"student." + k for k in self.objective.student.state_dict()}
        extras = {k: v for k, v in self.objective.state_dict().items() if k not in student_keys}
        state = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stats": {**self.stats.__dict__},
            "elapsed": self.elapsed,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective_extras": extras,
            "torch_rng": torch.get_rng_state(),
            "metrics": self.history,
        }
        student, entries = checkpoint_parts(self.objective.student)
        save_checkpoint(self.out / "last.pt", student, self.meta(),
                        extra={"trainer": state, **entries})
        self.saved_at = (self.epoch, self.batch_in_epoch)

    def _load_trainer_state(self) -> None:
        _, raw = read_checkpoint(self.out / "last.pt", map_location="cpu")
        state = raw["trainer"]
        restore_student(self.objective.student, raw)
        self.objective.load_state_dict(
            {
                **{"student." + k: v for k, v in raw["state_dict"].items()},
                **state["objective_extras"],
            },
            strict=False,
        )
        self.objective.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.stats = EpochStats(**state["stats"])
        self.elapsed = state["elapsed"]
        self.train_time = state["train_time"]
        self.train_images = state["train_images"]
        torch.set_rng_state(state["torch_rng"])
        self.history = state["metrics"] if "metrics" in state else self._rows_on_disk()
        self.saved_at = (self.epoch, self.batch_in_epoch)
        if self.dist.is_main:
            console.print(
                f"{self.out} is complete: all {self.epoch} of its epochs are trained"
                if self.epoch >= self.config.epochs else
                f"resuming {self.out} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}"
            )

    def _rows_on_disk(self) -> list[dict[str, Any]]:
        """metrics.jsonl cut to the epochs last.pt holds, for a last.pt from before kdpipe kept
        the rows in it: the first row of each such epoch, lines cut short by a kill dropped."""
        path = self.out / "metrics.jsonl"
        rows: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("epoch") in range(1, self.epoch + 1):
                    rows.setdefault(row["epoch"], row)
        return [rows[e] for e in sorted(rows)]

    # ------------------------------------------------------------------ summary
    def _finish(self) -> dict[str, Any]:
        if not self.dist.is_main:
            distributed.shutdown(self.dist)
            return {}
        student, entries = checkpoint_parts(self.objective.student)
        final = self._evaluate("test")
        summary = TrainSummary.from_json({
            **self.record,
            "model": self.config.model,
            "top1": final["top1"],
            "test_loss": final["loss"],
            "test_images": final["n"],
            "train_images": int(self.dataset.train_labels.numel()),
            "epochs": self.config.epochs,
            "params": count_params(student),
            "macs": count_macs(student, (1, *self.dataset.train_images.shape[1:])),
            "wall_time_s": self.elapsed,
            "images_per_s": self.train_images / max(self.train_time, 1e-9),
            "world_size": self.dist.world_size,
            "precision": precision_name(self.config.amp, self.device),
            "environment": environment(self.device),
        })
        if self.dataset.val_images is not None:
            summary.val_top1 = self._evaluate("val")["top1"]
        summary.warnings = list(run_warnings(self.history, self.compare_test).values())
        save_checkpoint(
            self.out / "model.pt",
            student.to(memory_format=torch.contiguous_format),
            self.meta(metrics={"top1": summary.top1}),
            extra=entries,
        )
        atomic.write_json(self.out / "summary.json", summary.to_json())
        distributed.shutdown(self.dist)
        return summary.to_json()
