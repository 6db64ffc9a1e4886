"""Data: datasets -> samples ``(path, pid, camid)``; images; transforms; PK sampler; loaders."""

from . import folders, manifest, synthetic  # noqa: F401  (register the datasets)
from .bad_images import BadImageLog
from .datasets import (
    DATASETS,
    MissingSplit,
    ReidDataset,
    Sample,
    build_dataset,
    dataset_info,
    relabel,
)
from .image_cache import ImageCache
from .images import ImageDataset, ImageReadError, read_image
from .loaders import PKSampling, build_test_loader, build_train_loader, collate_skip_bad
from .manifest import load_manifest
from .sampler import PKSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Augmentation, build_transforms

__all__ = [
    "Augmentation",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadImageLog",
    "ImageCache",
    "ImageDataset",
    "ImageReadError",
    "MissingSplit",
    "PKSampler",
    "PKSampling",
    "ReidDataset",
    "Sample",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "collate_skip_bad",
    "dataset_info",
    "load_manifest",
    "read_image",
    "relabel",
]
