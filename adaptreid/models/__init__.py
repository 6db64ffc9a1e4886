"""Backbones (ResNet, IBN-Net-a, MobileNetV2), heads (BNNeck), ``ReidModel`` and safe weight
loading. State-dict keys follow torchvision / official IBN-Net, so their weight files load as-is.

New backbones or heads register themselves in :data:`BACKBONES` / :data:`HEADS`; import their
module below so that the registration runs.
"""

from . import heads, mobilenet_v2, pcb, resnet, small_cnn  # noqa: F401  (registers backbones and heads)
from .build import BACKBONES, HEADS, HeadSettings, ReidModel, build_model, model_from_arch
from .heads import BNNeck
from .weights import KNOWN_URLS, LoadReport, load_pretrained

__all__ = [
    "BACKBONES",
    "HEADS",
    "HeadSettings",
    "BNNeck",
    "KNOWN_URLS",
    "LoadReport",
    "ReidModel",
    "build_model",
    "load_pretrained",
    "model_from_arch",
]
