"""Data: datasets -> samples ``(path, pid, camid)``; images; transforms; PK sampler; loaders."""

from . import synthetic  # noqa: F401  (registers synthetic-source / synthetic-target)
from .datasets import (
    DATASETS,
    ReidDataset,
    Sample,
    build_dataset,
    dataset_info,
    load_manifest,
    relabel,
)
from .images import ImageDataset, read_image
from .loaders import build_test_loader, build_train_loader
from .sampler import PKSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "PKSampler",
    "ReidDataset",
    "Sample",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "dataset_info",
    "load_manifest",
    "read_image",
    "relabel",
]
