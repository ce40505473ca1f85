"""The data room: CIFAR-10 from torchvision's batches, an ImageFolder tree or a tarball, decoded
once into a uint8 tensor cache, and loaders that crop, flip and normalize whole batches on the
training device (plus a plain torchvision `DataLoader` as the reference).

Nothing here imports another stage of kdpipe.
"""

from kdpipe.data.augment import crop_flip, random_crop, random_flip
from kdpipe.data.cache import default_cache_dir
from kdpipe.data.dataset import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    Dataset,
    default_data_path,
    load_dataset,
)
from kdpipe.data.loader import (
    LOADERS,
    BatchLoader,
    Loader,
    LoaderOptions,
    make_loader,
    normalize,
)
from kdpipe.data.reference import ReferenceLoader
from kdpipe.data.sources import HOW_TO_GET_DATA
from kdpipe.data.splits import subset

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "HOW_TO_GET_DATA",
    "LOADERS",
    "Loader",
    "LoaderOptions",
    "BatchLoader",
    "Dataset",
    "ReferenceLoader",
    "crop_flip",
    "default_cache_dir",
    "default_data_path",
    "load_dataset",
    "make_loader",
    "normalize",
    "random_crop",
    "random_flip",
    "subset",
]
