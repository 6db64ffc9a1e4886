"""``ReidModel`` (backbone + head) and ``build_model``, with the backbone / head registries.

Adding a backbone or a head (e.g. PCB for PAST) is one file::

    from .build import BACKBONES, HEADS

    @BACKBONES.register("my_net")
    def my_net(last_stride=1) -> nn.Module: ...   # has .out_channels; forward -> (N, C, H, W)

    @HEADS.register("my_head")
    class MyHead(nn.Module): ...   # see adaptreid.models.heads for the interface

plus one import line in ``adaptreid/models/__init__.py`` so that the registration runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .registries import BACKBONES, HEADS

__all__ = ["BACKBONES", "HEADS", "HeadSettings", "ReidModel", "build_model", "model_from_arch"]

logger = logging.getLogger("adaptreid")


_NECK_FEATS = ("after", "before")


class ReidModel(nn.Module):
    """A re-ID network: ``backbone`` (image -> feature map) + ``head`` (map -> features).

    ``forward(x)``:

    * training mode: the head's dict ``{"feat": pre-BN feature (triplet / centre losses),
      "bn_feat": BN feature, "logits": classifier output, (N, C) or per part (N, p, C), or
      None}`` (see :mod:`adaptreid.models.heads`);
    * eval mode: the retrieval embedding, ``bn_feat`` (``neck_feat="after"``, default) or
      ``feat`` (``"before"``), shape ``(N, feat_dim)``.

    ``arch`` is a plain dict such that ``model_from_arch(model.arch)`` rebuilds the same
    network (weights aside); checkpoints store it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        neck_feat: Literal["after", "before"] = "after",
        arch: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if neck_feat not in _NECK_FEATS:
            raise ConfigError(f"neck_feat must be 'after' or 'before', got {neck_feat!r}")
        self.backbone = backbone
        self.head = head
        self.neck_feat = neck_feat
        self.feat_dim = int(head.feat_dim)
        self.arch: dict[str, Any] = dict(arch or {})
        self._body_frozen = False

    @property
    def num_classes(self) -> int:
        return int(getattr(self.head, "num_classes", 0))

    @property
    def num_parts(self) -> int:
        """Parts of the embedding, each L2-normalised separately at extraction (PCB: p)."""
        return int(getattr(self.head, "num_parts", 1))

    def forward(self, x: Tensor) -> dict[str, Tensor | None] | Tensor:
        out = self.head(self._body()(x))
        if self.training:
            return out
        return out["bn_feat" if self.neck_feat == "after" else "feat"]

    # -- torch.compile of the backbone ------------------------------------------------------
    def set_compiled(self, *, train: bool = False, extract: bool = False) -> None:
        """Run the backbone through ``torch.compile`` (inductor) in training mode (``train``)
        and / or eval mode (``extract``); the head stays eager, so that a new classifier
        (MSPLR and PAST replace it at every step) never forces a recompilation. The compiled
        module is built on first use and is not part of ``state_dict`` or of a copy. Chosen
        per machine by :func:`adaptreid.runtime.compile.resolve_compile` (``train.compile``)."""
        self.__dict__["_compile_modes"] = (bool(train), bool(extract))
        self.__dict__.pop("_compiled_body", None)

    @property
    def compiled_modes(self) -> tuple[bool, bool]:
        """``(train, extract)``: where the backbone runs compiled (:meth:`set_compiled`)."""
        return self.__dict__.get("_compile_modes", (False, False))

    def _body(self) -> nn.Module:
        if not self.compiled_modes[0 if self.training else 1]:
            return self.backbone
        body = self.__dict__.get("_compiled_body")
        if body is None:
            body = self.__dict__["_compiled_body"] = torch.compile(self.backbone)
        return body

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled_body", None)  # rebuilt on first use (a copy compiles its own)
        return state

    def reset_classifier(self, num_classes: int, weight: Tensor | None = None) -> None:
        """Replace the head's classifier (see :meth:`BNNeck.reset_classifier`)."""
        self.head.reset_classifier(num_classes, weight)
        self.arch["num_classes"] = int(num_classes)

    # -- parameter groups -------------------------------------------------------------------
    def body_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone's parameters (all of them; filter on ``requires_grad`` for optimisers)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The head's parameters, including the frozen BN bias (``requires_grad=False``)."""
        return self.head.parameters()

    def freeze_body(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the backbone: no gradients and, while frozen, its BatchNorm
        layers stay in eval mode (running statistics do not drift) even in ``model.train()``.
        Used by MSPLR for its first fine-tuning epochs."""
        self._body_frozen = bool(frozen)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    @property
    def body_frozen(self) -> bool:
        return self._body_frozen

    def train(self, mode: bool = True) -> ReidModel:
        super().train(mode)
        if self._body_frozen:
            self.backbone.eval()
        return self


#: ``ReidModel.arch`` entries read by :meth:`HeadSettings.from_arch` -> its field names.
_HEAD_ARCH = {
    "head": "name",
    "pooling": "pooling",
    "embedding_dim": "embedding_dim",
    "neck_feat": "neck_feat",
    "head_options": "options",
}
#: The other ``ReidModel.arch`` entries, :func:`build_model`'s arguments of the same name.
_BODY_ARCH = ("num_classes", "last_stride", "backbone_options")


@dataclass(frozen=True)
class HeadSettings:
    """The head of :func:`build_model` (a :data:`HEADS` entry) and how it makes the
    embedding."""

    name: str = "bnneck"
    """A :data:`HEADS` name (``bnneck``, ``pcb``)."""
    pooling: str = "avg"
    """``"avg"``, ``"max"`` or ``"gem"``."""
    embedding_dim: int = 0
    """> 0 adds a Linear reduction before the BN neck."""
    neck_feat: Literal["after", "before"] = "after"
    """Eval-mode embedding, ``"after"`` (bn_feat) or ``"before"`` (feat) the BN."""
    options: Mapping[str, Any] | None = None
    """Extra keyword arguments of the head's factory (e.g. ``{num_parts: 9}`` for pcb)."""

    @classmethod
    def from_config(cls, m: Any) -> HeadSettings:
        """From ``model.*`` (a :class:`~adaptreid.config.ModelConfig`): ``head``,
        ``pooling``, ``embedding_dim``, ``neck_feat``, ``head_options``."""
        return cls(
            name=m.head,
            pooling=m.pooling,
            embedding_dim=m.embedding_dim,
            neck_feat=m.neck_feat,
            options=m.head_options,
        )

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> HeadSettings:
        """From the head entries of a ``ReidModel.arch`` (``head``, ``pooling``,
        ``embedding_dim``, ``neck_feat``, ``head_options``; a missing one: the default)."""
        return cls(**{field: arch[key] for key, field in _HEAD_ARCH.items() if key in arch})


def build_model(
    backbone: str,
    *,
    num_classes: int = 0,
    last_stride: int = 1,
    pretrained: str | None = None,
    backbone_options: Mapping[str, Any] | None = None,
    head: HeadSettings | None = None,
    partial_weights: bool = False,
) -> ReidModel:
    """Build a :class:`ReidModel`.

    Args:
        backbone: a :data:`BACKBONES` name (``resnet18``, ``resnet50``, ``resnet50_ibn_a``,
            ``mobilenet_v2``, ...). Case-insensitive; a typo raises ConfigError with a hint.
        num_classes: classifier size (0: no classifier, e.g. before pseudo-labels exist).
        last_stride: 1 (re-ID default: final map twice as large) or 2 (ImageNet network).
        pretrained: backbone weights: a local file, a URL, or ``"imagenet"`` (the backbone's
            entry of :data:`adaptreid.models.weights.KNOWN_URLS`, loaded from the torch hub
            cache or downloaded when a network exists). Classifier keys (``fc.*``) are
            ignored; the load report is logged. A file that leaves some backbone tensor at
            its initial value is an error unless ``partial_weights``.
        backbone_options: extra keyword arguments of the backbone's factory.
        head: the head (name, pooling, embedding size, eval-mode feature, options; a
            :class:`HeadSettings`, None: its defaults, a BNNeck on average pooling).
    """
    hs = head or HeadSettings()
    head_name, head_options = hs.name, hs.options
    pooling, embedding_dim, neck_feat = hs.pooling, hs.embedding_dim, hs.neck_feat
    factory = BACKBONES.get(backbone)
    head_cls = HEADS.get(head_name)
    bb_opts = dict(backbone_options or {})
    hd_opts = dict(head_options or {})
    try:
        body = factory(last_stride=last_stride, **bb_opts)
    except TypeError as e:
        raise ConfigError(f"backbone {backbone!r}: bad options {bb_opts}: {e}") from e
    if not hasattr(body, "out_channels"):
        raise ConfigError(f"backbone {backbone!r} has no out_channels attribute")
    try:
        neck = head_cls(
            body.out_channels,
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            pooling=pooling,
            **hd_opts,
        )
    except TypeError as e:
        raise ConfigError(f"head {head_name!r}: bad options {hd_opts}: {e}") from e
    arch = {
        "backbone": getattr(factory, "__name__", str(backbone)),
        "num_classes": int(num_classes),
        "last_stride": int(last_stride),
        "pooling": str(pooling).lower(),
        "embedding_dim": int(embedding_dim),
        "neck_feat": neck_feat,
        "head": str(head_name).lower(),
        "backbone_options": bb_opts,
        "head_options": hd_opts,
    }
    model = ReidModel(body, neck, neck_feat=neck_feat, arch=arch)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(
            model.backbone, pretrained, arch=arch["backbone"], allow_partial=partial_weights
        )
    return model


def model_from_arch(arch: Mapping[str, Any]) -> ReidModel:
    """Rebuild a (randomly initialised) model from ``ReidModel.arch`` (e.g. a checkpoint's)."""
    if "backbone" not in arch:
        raise ConfigError(f"model arch {dict(arch)} has no 'backbone' entry")
    known = {*_BODY_ARCH, *_HEAD_ARCH}
    extra = set(arch) - known - {"backbone"}
    if extra:
        raise ConfigError(f"model arch has unknown entries {sorted(extra)}; known: {sorted(known)}")
    kwargs = {k: arch[k] for k in _BODY_ARCH if k in arch}
    return build_model(arch["backbone"], head=HeadSettings.from_arch(arch), **kwargs)
