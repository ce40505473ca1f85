"""Stage one: training baselines and distilling students (loop, schedule, objectives, losses).

    from kdpipe.train import TrainConfig, train_baseline
    summary = train_baseline(TrainConfig(model="resnet20", epochs=30, out="runs/resnet20"))

Names are imported on first use (PEP 562): `kdpipe.train.config` is what the CLI needs to build
its flags, and importing it must not pay for PyTorch, the models and the trainer (`kdpipe --help`).
"""

from __future__ import annotations

from kdpipe.lazy import lazy_exports

_EXPORTS = {
    "create_student": "kdpipe.train.baseline",
    "train_baseline": "kdpipe.train.baseline",
    "DistillConfig": "kdpipe.train.config",
    "EvalConfig": "kdpipe.train.config",
    "TrainConfig": "kdpipe.train.config",
    "load_training_data": "kdpipe.train.data",
    "resolve_device": "kdpipe.train.device",
    "evaluate": "kdpipe.train.evaluate",
    "Trainer": "kdpipe.train.trainer",
    "CrossEntropyObjective": "kdpipe.train.trainer_objective",
    "Objective": "kdpipe.train.trainer_objective",
    "StepOutput": "kdpipe.train.trainer_objective",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
