"""Re-ID heads: feature map -> ``{"feat", "bn_feat", "logits"}``.

A head is any ``nn.Module`` registered in :data:`HEADS` whose constructor is
``Head(in_channels, num_classes=0, **options)`` and which has:

* ``feat_dim``: the length of the retrieval embedding;
* ``forward(fmap) -> dict`` with ``"feat"`` (for metric losses), ``"bn_feat"`` (for the
  classifier and, by default, retrieval) and ``"logits"``: ``None`` without a classifier,
  else a tensor of shape ``(N, C)`` (one classifier, one softmax), or ``(N, p, C)`` for a
  head with one classifier per part (:class:`~adaptreid.models.pcb.PCBHead` with
  ``classifier="per_part"``): ``logits[:, k]`` are part ``k``'s logits, for its own softmax.
  The losses accept both (:func:`adaptreid.losses.cross_entropy.parts_cross_entropy` sums
  the per-part cross-entropies);
* ``reset_classifier(num_classes, weight=None)``: a fresh classifier for ``num_classes``
  classes; ``weight``, when given, is ``(num_classes, feat_dim)`` (PAST eq. 7: cluster-mean
  features, in ``feat``'s column layout), whatever the classifier's own layout (a per-part
  classifier takes each part's columns);
* optionally ``num_parts`` (default 1): ``feat`` is ``num_parts`` equal chunks, each
  L2-normalised separately at extraction.

:class:`BNNeck` is the "Bag of Tricks" neck (Luo et al. 2019). The part-based PCB head
(:mod:`adaptreid.models.pcb`) plugs in the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .build import HEADS

__all__ = ["GeneralizedMeanPooling", "BNNeck", "build_pooling"]


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling ``(mean(x^p))^(1/p)`` over H, W with a learnable ``p`` (Radenovic et al.).

    Computed in float32 (``pow`` is unstable in bf16/fp16) and returned in the input dtype.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.float()
        y = x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


class _GlobalPool(nn.Module):
    def __init__(self, kind: Literal["avg", "max"]) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        return x.amax(dim=(2, 3))

    def extra_repr(self) -> str:
        return self.kind


def build_pooling(pooling: str) -> nn.Module:
    """``"avg"``, ``"max"`` or ``"gem"``: a module mapping (N, C, H, W) to (N, C)."""
    name = str(pooling).lower()
    if name in ("avg", "max"):
        return _GlobalPool(name)  # type: ignore[arg-type]
    if name == "gem":
        return GeneralizedMeanPooling()
    raise ConfigError(f"unknown pooling {pooling!r}: expected 'avg', 'max' or 'gem'")


@HEADS.register("bnneck", "bn_neck")
class BNNeck(nn.Module):
    """pooling -> [Linear embedding] -> ``feat`` -> BatchNorm1d (bias frozen) -> ``bn_feat``
    -> [Linear classifier, no bias] -> ``logits``.

    Args:
        in_channels: channels of the backbone feature map.
        num_classes: classifier outputs; 0 for no classifier (``logits`` is ``None``).
        embedding_dim: if > 0, a bias-free Linear reduces the pooled feature to this size.
        pooling: ``"avg"``, ``"max"`` or ``"gem"``.

    Submodules: ``pool``, ``embedding`` (or ``None``), ``bn``, ``classifier`` (or ``None``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        embedding_dim: int = 0,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if in_channels <= 0 or num_classes < 0 or embedding_dim < 0:
            raise ConfigError(
                f"BNNeck needs in_channels > 0, num_classes >= 0, embedding_dim >= 0; got "
                f"{in_channels}, {num_classes}, {embedding_dim}"
            )
        self.in_channels = int(in_channels)
        self.pooling = str(pooling).lower()
        self.pool = build_pooling(pooling)
        self.embedding: nn.Linear | None = None
        if embedding_dim > 0:
            self.embedding = nn.Linear(in_channels, embedding_dim, bias=False)
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
        self.feat_dim = int(embedding_dim) if embedding_dim > 0 else self.in_channels
        self.bn = nn.BatchNorm1d(self.feat_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)  # "Bag of Tricks": no shift before the classifier
        self.classifier: nn.Linear | None = None
        self.num_classes = 0
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, weight: Tensor | None = None) -> None:
        """Replace the classifier by a fresh ``Linear(feat_dim, num_classes, bias=False)``.

        Without ``weight`` it is initialised from N(0, 0.001^2) (the Bag of Tricks'
        initialisation, also used for MSPLR's new classifier at each pseudo-label step, whose
        initialisation the MSPLR paper does not state). With ``weight`` of shape
        ``(num_classes, feat_dim)`` it is copied in (PAST eq. 7: cluster-mean features; any
        normalisation is the caller's choice). ``num_classes=0`` removes the classifier.
        """
        num_classes = int(num_classes)
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        ref = self.bn.weight
        if num_classes == 0:
            if weight is not None:
                raise ConfigError("reset_classifier: a weight was given with num_classes=0")
            self.classifier = None
            self.num_classes = 0
            return
        classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
        classifier.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if weight is None:
                nn.init.normal_(classifier.weight, std=0.001)
            else:
                if tuple(weight.shape) != (num_classes, self.feat_dim):
                    raise ConfigError(
                        f"reset_classifier: weight has shape {tuple(weight.shape)}, expected "
                        f"({num_classes}, {self.feat_dim})"
                    )
                classifier.weight.copy_(weight.detach())
        self.classifier = classifier
        self.num_classes = num_classes

    def forward(self, fmap: Tensor) -> dict[str, Tensor | None]:
        feat = self.pool(fmap).flatten(1)
        if self.embedding is not None:
            feat = self.embedding(feat)
        bn_feat = self.bn(feat)
        logits = self.classifier(bn_feat) if self.classifier is not None else None
        return {"feat": feat, "bn_feat": bn_feat, "logits": logits}

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, num_classes={self.num_classes}"
