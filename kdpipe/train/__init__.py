"""Stage one: training baselines and distilling students (loop, schedule, objectives, losses)."""

from kdpipe.train.baseline import create_student, train_baseline
from kdpipe.train.config import DistillConfig, EvalConfig, TrainConfig
from kdpipe.train.data import load_training_data
from kdpipe.train.device import resolve_device
from kdpipe.train.evaluate import evaluate
from kdpipe.train.trainer import Trainer
from kdpipe.train.trainer_objective import CrossEntropyObjective, Objective, StepOutput

__all__ = [
    "CrossEntropyObjective", "DistillConfig", "EvalConfig", "Objective", "StepOutput",
    "TrainConfig", "Trainer", "create_student", "evaluate", "load_training_data",
    "resolve_device", "train_baseline",
]
