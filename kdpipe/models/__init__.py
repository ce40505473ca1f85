"""Models: the registry and factories, named feature taps, and the checkpoint format.

    model = create("resnet20")                      # or any name in available()
    with FeatureTaps(model, feature_layers(model)) as taps:
        logits, feats = taps(images)                # feats["stage1"], ..., feats["embedding"]
    save_checkpoint("model.pt", model, meta); model = load_checkpoint("model.pt")

Importing this package registers every model (each family module adds its own entries).
"""

from kdpipe.models import mobilenet, plain_cnn, resnet_cifar  # noqa: F401  (registers the models)
from kdpipe.models.checkpoint import (
    CheckpointMeta,
    check_fits_data,
    checkpoint_meta,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from kdpipe.models.complexity import count_macs, count_params
from kdpipe.models.features import FeatureTaps, feature_layers, feature_shapes, stage_names
from kdpipe.models.registry import MODELS, available, create

__all__ = [
    "MODELS",
    "CheckpointMeta",
    "FeatureTaps",
    "available",
    "check_fits_data",
    "checkpoint_meta",
    "count_macs",
    "count_params",
    "create",
    "feature_layers",
    "feature_shapes",
    "file_sha256",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "stage_names",
]
