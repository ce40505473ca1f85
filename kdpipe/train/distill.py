"""`kdpipe distill`: train a student (from random initialization, or from `--init-checkpoint`)
against a frozen teacher.

    loss = (1 - alpha) * CE(labels, student) + alpha * T^2 * KL(teacher_T || student_T)   (kd)

`DistillConfig` (in `kdpipe.train.config`) extends `TrainConfig` (same schedule, data and
execution options) with the teacher and the method's hyperparameters; `distill(config)` checks
the teacher against the data before any training, builds the method's plan
(`kdpipe.train.methods`), runs its stages (FitNets' hint stage in `out/stage1/`) and then the
main `Trainer`. The run folder holds what `kdpipe train` writes (config.json, last.pt,
metrics.jsonl, model.pt, summary.json), the summary also naming the method, the teacher and the
teacher's test top-1, parameters and MACs.

`--qat` (quantization-aware distillation, `kdpipe.train.qat`) trains the main stage's student
fake-quantized from `--init-checkpoint`; its epoch and final top-1 are then those of the INT8
simulation, and its checkpoints carry the learned activation ranges beside the FP32 weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdpipe import atomic
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD, Dataset
from kdpipe.errors import KdpipeError
from kdpipe.models import (
    check_fits_data,
    checkpoint_meta,
    count_macs,
    count_params,
    load_checkpoint,
    read_checkpoint,
)
from kdpipe.progress import console, plural
from kdpipe.report.records import load_train_summary
from kdpipe.train.baseline import create_student
from kdpipe.train.config import DistillConfig
from kdpipe.train.data import load_training_data
from kdpipe.train.device import resolve_device
from kdpipe.train.evaluate import evaluate
from kdpipe.train.methods import (
    DistillObjective,
    MethodContext,
    Stage,
    Teacher,
    TeacherCache,
    build_plan,
    needs_teacher,
    resolve,
)
from kdpipe.train.precision import precision_name
from kdpipe.train.qat import SCHEME, QatStudent, require_qat_libraries
from kdpipe.train.trainer import Trainer, hold_run_folder

__all__ = ["DistillConfig", "distill", "load_init", "load_teacher", "resolve_student"]


def resolve_student(config: DistillConfig) -> DistillConfig:
    """`student` and `model` made equal: `--student` wins, else the student is `--model`."""
    student = config.student or config.model
    return dataclasses.replace(config, student=student, model=student)


def load_teacher(config: DistillConfig, data: Dataset) -> tuple[Teacher, dict[str, Any]]:
    """The frozen teacher and what the summary records about it; every mismatch with the data or
    with `--teacher` is a `KdpipeError` raised here, before any training."""
    if not config.teacher_checkpoint:
        raise KdpipeError(
            f"method {config.method!r} needs a teacher: pass --teacher-checkpoint PATH (a kdpipe "
            "checkpoint, e.g. from `kdpipe train`, or ../shared/weights/resnet110-cifar10jpeg.th)"
        )
    path = Path(config.teacher_checkpoint)
    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    if config.teacher and config.teacher != meta.model:
        raise KdpipeError(
            f"--teacher {config.teacher} does not match {path}, which holds a {meta.model}; "
            f"pass --teacher {meta.model} or leave --teacher out"
        )
    check_fits_data(f"teacher {path}", meta.classes, meta.input_shape, data.classes,
                    data.train_images.shape[1:])
    # Recorded here, before any feature tap is attached, so reports never load the teacher again.
    size = {"teacher_params": count_params(model),
            "teacher_macs": count_macs(model, (1, *meta.input_shape))}
    device = resolve_device(config.device)
    cache = teacher_cache(config, meta.source_sha256, device)
    top1 = teacher_top1(model.to(device), data, meta.mean, meta.std, device, cache)
    teacher = Teacher(model, name=meta.model, mean=meta.mean, std=meta.std,
                      data_mean=CIFAR10_MEAN, data_std=CIFAR10_STD, amp=config.amp, cache=cache)
    info = {"teacher": meta.model, "teacher_checkpoint": str(path),
            "teacher_sha256": meta.source_sha256, "teacher_top1": top1, **size}
    return teacher, info


def load_init(student: nn.Module, config: DistillConfig, data: Dataset) -> dict[str, Any]:
    """Load `config.init_checkpoint`'s weights into `student` (same model, classes, input size
    and normalization, or a `KdpipeError`); returns what the summary records about it."""
    path = Path(config.init_checkpoint)
    model = load_checkpoint(path)
    meta = checkpoint_meta(model)
    if (meta.model, meta.model_kwargs) != (config.model, dict(config.model_kwargs)):
        raise KdpipeError(
            f"--init-checkpoint {path} holds a {meta.model} {meta.model_kwargs or ''}, not the "
            f"student {config.model} {config.model_kwargs or ''}; pass --student {meta.model} "
            "(and its model_kwargs) or another checkpoint")
    check_fits_data(f"--init-checkpoint {path}", meta.classes, meta.input_shape, data.classes,
                    data.train_images.shape[1:])
    if (list(meta.mean), list(meta.std)) != (list(CIFAR10_MEAN), list(CIFAR10_STD)):
        raise KdpipeError(f"--init-checkpoint {path} normalizes inputs with mean {meta.mean}, "
                          f"std {meta.std}; kdpipe trains with {list(CIFAR10_MEAN)}, "
                          f"{list(CIFAR10_STD)}")
    student.load_state_dict(model.state_dict())
    return {"init_checkpoint": str(path), "init_sha256": meta.source_sha256}


def teacher_cache(config: DistillConfig, sha256: str, device: torch.device) -> TeacherCache | None:
    """The opt-in cache of teacher outputs; bf16 and fp32 outputs are kept apart."""
    if not config.teacher_cache:
        return None
    return TeacherCache(config.teacher_cache, sha256, precision_name(config.amp, device))


def teacher_top1(model: torch.nn.Module, data: Dataset, mean: list[float], std: list[float],
                 device: torch.device, cache: TeacherCache | None) -> float:
    """The teacher's test top-1, remembered in the teacher cache (a sweep evaluates it once)."""
    digest = hashlib.sha1(data.test_images.numpy().tobytes())
    digest.update(data.test_labels.numpy().tobytes())
    memo = cache.dir / f"top1-{digest.hexdigest()[:16]}.json" if cache else None
    if memo is not None and memo.exists():
        return json.loads(memo.read_text())["top1"]
    top1 = evaluate(model, data.test_images, data.test_labels, mean, std, device=device)["top1"]
    if memo is not None:
        atomic.write_json(memo, {"top1": top1, "test_images": int(data.test_labels.numel())})
    return top1


def run_stage(stage: Stage, config: DistillConfig, data: Dataset, resume: bool,
              record: dict[str, Any]) -> dict[str, Any]:
    """Train one stage in `out/<stage>/` (resumable on its own); returns its summary."""
    out = Path(config.out) / stage.name
    if resume and (out / "summary.json").exists():
        return load_train_summary(out).to_json()
    console.print(f"{stage.name}: {plural(stage.epochs, 'epoch')} in {out}"
                  + (f" ({stage.about})" if stage.about else ""))
    stage_config = dataclasses.replace(config, out=str(out), epochs=stage.epochs)
    trainer = Trainer(stage_config, stage.objective, data, resume=resume,
                      record={**record, "stage": stage.name})
    trainer.setup()
    return trainer.fit()


def distill(config: DistillConfig, *, resume: bool = False) -> dict[str, Any]:
    """Distill `config.teacher_checkpoint` into `config.student` (fresh, or from
    `config.init_checkpoint`; fake-quantized with `config.qat`); returns the summary."""
    config = resolve_student(config)
    resolve(config.method)  # an unknown method fails before the data loads
    if config.qat:
        require_qat_libraries()
    with hold_run_folder(config.out):  # the stages too: a second run is refused before any work
        data = load_training_data(config)
        teacher, record = None, {"method": config.method}
        if needs_teacher(config.method) or config.teacher_checkpoint:
            teacher, info = load_teacher(config, data)
            record.update(info)
        # the same initial student for every method of a seed, and for `kdpipe train` too
        student = create_student(config, len(data.classes))
        if config.init_checkpoint:
            record.update(load_init(student, config, data))
        plan = build_plan(config.method, MethodContext(student, teacher, config, data.image_shape))
        for stage in plan.stages:
            summary = run_stage(stage, config, data, resume, record)
            record.setdefault("stages", {})[stage.name] = {
                "epochs": stage.epochs, "wall_time_s": summary["wall_time_s"]}
            _, raw = read_checkpoint(Path(config.out) / stage.name / "model.pt")
            student.load_state_dict(raw["state_dict"])  # the next phase starts where this ended
        if config.qat:
            console.print("quantization-aware: preparing the fake-quantized student (PT2E)")
            student = QatStudent(student, CIFAR10_MEAN, CIFAR10_STD, data.image_shape)
            record["qat"] = {**SCHEME, "top1": "of the fake-quantized student (INT8 simulation)"}
        objective = DistillObjective(student, teacher, plan.terms, plan.ce_weight,
                                     config.label_smoothing)
        if plan.stages:
            console.print(f"main stage ({config.method}): {plural(config.epochs, 'epoch')} in "
                          f"{config.out}")
        trainer = Trainer(config, objective, data, resume=resume, record=record)
        trainer.setup()
        return trainer.fit()
