"""The backbone and head registries (``model.backbone`` / ``model.head`` names), apart from
:mod:`.build` so that weight loading (:mod:`.weights`) resolves a backbone alias without
importing the model builder."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry

__all__ = ["BACKBONES", "HEADS"]

#: name -> factory ``(last_stride=..., **options) -> nn.Module`` with ``out_channels``.
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
#: name -> class ``(in_channels, num_classes=0, **options) -> nn.Module`` (see ``heads.py``).
HEADS: Registry[Callable[..., nn.Module]] = Registry("head")
