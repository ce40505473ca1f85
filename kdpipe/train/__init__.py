"""Stage one: training baselines and distilling students (loop, schedule, objectives, losses)."""

from kdpipe.train.config import TrainConfig
from kdpipe.train.evaluate import evaluate
from kdpipe.train.objective import CrossEntropyObjective, Objective, StepOutput
from kdpipe.train.run import load_training_data, train_baseline
from kdpipe.train.trainer import Trainer, resolve_device

__all__ = [
    "CrossEntropyObjective", "Objective", "StepOutput", "TrainConfig", "Trainer", "evaluate",
    "load_training_data", "resolve_device", "train_baseline",
]
