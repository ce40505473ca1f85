"""The training loop: one `Trainer` for scratch baselines and every distillation method.

A recipe in the torchtune manner: `setup()` builds loaders, optimizer and schedule (and restores a
checkpoint on resume), `fit()` runs the epochs, `save_checkpoint()` writes atomically. What is
minimised is an `Objective`; the trainer never looks inside it.

Files in the run folder (`config.out`):
    config.json     the resolved configuration
    last.pt         student + trainer state, rewritten atomically after every epoch (and on Ctrl-C)
    metrics.jsonl   one JSON line per epoch
    model.pt        the final student checkpoint (what `kdpipe eval` and `kdpipe export` take)
    summary.json    top-1, params, MACs, wall time, images/s, device, versions, git commit
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdpipe import atomic
from kdpipe.config import to_dict
from kdpipe.data import Dataset, make_loader
from kdpipe.errors import KdpipeError
from kdpipe.models import CheckpointMeta, count_macs, count_params, read_checkpoint, save_checkpoint
from kdpipe.progress import console, progress_bar
from kdpipe.runinfo import environment
from kdpipe.train import distributed
from kdpipe.train.config import TrainConfig
from kdpipe.train.evaluate import evaluate
from kdpipe.train.objective import Objective
from kdpipe.train.precision import precision_name, uses_bf16
from kdpipe.train.schedule import make_scheduler

# Config fields that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {"progress", "out", "threads", "device", "cache_dir", "data", "num_workers"}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdpipeError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return device


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

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        distributed.init(self.dist, self.device)
        self._check_run_folder()
        self.objective.to(self.device)
        if cfg.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        mean, std = self.mean_std
        self.loader = make_loader(
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
            **({"num_workers": cfg.num_workers} if cfg.loader == "reference" else {}),
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
            now = to_dict(self.config)
            changed = sorted(
                k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]
            )
            if changed:
                raise KdpipeError(
                    f"--resume would change {', '.join(changed)} of the run in {self.out}; "
                    "resume with the same settings or start a new --out"
                )

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary (also written to summary.json)."""
        started = time.perf_counter() - self.elapsed
        cfg = self.config
        try:
            with progress_bar(cfg.progress and self.dist.is_main) as bar:
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
                    self.elapsed = time.perf_counter() - started
                    self._end_epoch()
        except KeyboardInterrupt:
            self.elapsed = time.perf_counter() - started
            if self.dist.is_main:
                self.save_checkpoint()
                console.print(f"interrupted: saved {self.out / 'last.pt'}; continue with --resume")
            raise
        return self._finish()

    def _train_epoch(self, bar: Any, task: Any) -> None:
        self.objective.train()
        self.objective.start_epoch(self.epoch)
        self.loader.set_epoch(self.epoch)
        tick = time.perf_counter()
        for i, (images, labels) in enumerate(self.loader):
            if i < self.batch_in_epoch:  # resumed mid-epoch: the order is a function of the epoch
                continue
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

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> Any:
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
        stats = self.stats
        self.epoch += 1
        self.batch_in_epoch = 0
        self.stats = EpochStats()
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return
        row: dict[str, Any] = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update(stats.summary())
        row["images_per_s"] = stats.seen * self.dist.world_size / max(stats.train_time, 1e-9)
        row.update({f"test_{k}": v for k, v in self._evaluate("test").items() if k != "n"})
        if self.dataset.val_images is not None:
            row.update({f"val_{k}": v for k, v in self._evaluate("val").items() if k != "n"})
        row["elapsed_s"] = self.elapsed
        atomic.append_jsonl(self.out / "metrics.jsonl", row)
        self.last_row = row
        self.save_checkpoint()
        console.print(
            f"epoch {self.epoch}/{self.config.epochs}  loss {row['train_loss']:.3f}  "
            f"train {row['train_top1']:.1f}%  test {row['test_top1']:.2f}%  "
            f"{row['images_per_s']:.0f} img/s"
        )
        distributed.barrier(self.dist)

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
        }
        student = self.objective.student
        save_checkpoint(self.out / "last.pt", student, self.meta(), extra={"trainer": state})

    def _load_trainer_state(self) -> None:
        _, raw = read_checkpoint(self.out / "last.pt", map_location="cpu")
        state = raw["trainer"]
        self.objective.student.load_state_dict(raw["state_dict"])
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
        if self.dist.is_main:
            console.print(
                f"resuming {self.out} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}"
            )

    # ------------------------------------------------------------------ summary
    def _finish(self) -> dict[str, Any]:
        if not self.dist.is_main:
            distributed.shutdown(self.dist)
            return {}
        student = self.objective.student
        final = self._evaluate("test")
        summary: dict[str, Any] = {
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
        }
        if self.dataset.val_images is not None:
            summary["val_top1"] = self._evaluate("val")["top1"]
        save_checkpoint(
            self.out / "model.pt",
            student.to(memory_format=torch.contiguous_format),
            self.meta(metrics={"top1": summary["top1"]}),
        )
        atomic.write_json(self.out / "summary.json", summary)
        distributed.shutdown(self.dist)
        return summary
