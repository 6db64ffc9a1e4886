"""PCB head: ``p`` horizontal stripes, one embedding per stripe (PAST, seed 003, section 3.1).

PAST "adopt[s] PCB as our model structure, in which ResNet-50 without last classification
layer is used as backbone", with "9 regions" ("even parts like PCB"), "the dimension of each
embedding layer [...] set to 256", and "following each embedding layer [...] the classifier
layer with one fully connected layer in the promoting stage". For evaluation "feature vectors
from embedding layers of 9 parts are normalized separately and then concatenated".

Layout of :class:`PCBHead` (backbone-agnostic: any feature map ``(N, C, H, W)``)::

    fmap --adaptive pool to (p, 1)--> p stripe vectors (N, p, C)
         --per-stripe 1x1 conv (C -> d, no bias) + BatchNorm + ReLU--> (N, p, d)
         --concatenate--> feat (N, p * d)      part k occupies columns [k d, (k + 1) d)
         --Linear(p * d -> num_classes, no bias)--> logits (promoting stage only)

* Stripes are the rows of ``adaptive_{avg,max}_pool2d(fmap, (p, 1))``: PyTorch's adaptive
  bins, so ``H`` need not be a multiple of ``p`` (ResNet-50 with last stride 1 at 384 x 128
  gives H = 24; 9 parts then use bins of 3 rows, some overlapping by one).
* The 1x1 convolutions of the ``p`` stripes are held in one ``(p, d, C)`` weight and applied
  with one ``einsum``; the ``p`` BatchNorms are one ``BatchNorm1d(p * d)`` over the
  concatenation (per-channel statistics, so identical to ``p`` separate BatchNorms).
* ``feat`` and ``bn_feat`` are the same tensor: the PCB embedding already ends with its own
  BatchNorm (+ ReLU), there is no separate BNNeck. The model's eval output is therefore the
  concatenated embedding, and :func:`adaptreid.engine.extract.extract_features` normalises each
  of its ``num_parts`` chunks separately (section 3.1); with the cosine metric the distance is
  then one minus the mean of the per-part cosines.

**One classifier over the concatenation.** Eq. 6-7 write the promoting-stage classifier as one
matrix ``W in R^{d x C}`` with one softmax, initialised with cluster-mean features; section 3.1
says a fully connected layer follows each embedding layer. A single ``Linear(p * d, C)`` is
both: its weight is the stack ``[W^1 ... W^p]`` of one FC per part, and its logits are the
sum of the per-part logits, fed to *one* softmax (eq. 6). (Original PCB instead sums ``p``
separate softmax losses; we follow PAST's equations.) It also keeps the head interface of
:class:`~adaptreid.models.heads.BNNeck` (``logits`` of shape ``(N, C)``), so the same head
trains on the labelled source with the generic re-ID loss. :meth:`PCBHead.reset_classifier`
takes a ``(C, p * d)`` weight: eq. 7's cluster means of the concatenated features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .build import HEADS

__all__ = ["PCBHead", "PAST_NUM_PARTS", "PAST_PART_DIM"]

#: PAST section 3.1: 9 regions, a 256-d embedding per region.
PAST_NUM_PARTS = 9
PAST_PART_DIM = 256


@HEADS.register("pcb")
class PCBHead(nn.Module):
    """Part-based head (PCB, Sun et al. 2018, as PAST section 3.1 uses it).

    Args:
        in_channels: channels of the backbone's feature map (2048 for ResNet-50, 1280 for
            MobileNetV2).
        num_classes: classifier outputs; 0 for none (``logits`` is ``None``; PAST's
            conservative stage).
        embedding_dim: per-part embedding size ``d``; 0 means 256 (PAST).
        pooling: ``"avg"`` or ``"max"`` pooling within each stripe.
        num_parts: number of horizontal stripes ``p`` (9 in PAST).

    Attributes: ``num_parts``, ``part_dim`` (= d), ``feat_dim`` (= p * d), ``num_classes``.
    Submodules / parameters: ``embedding`` (``(p, d, C)`` weight), ``bn``
    (``BatchNorm1d(p * d)``), ``classifier`` (``Linear(p * d, num_classes, bias=False)`` or
    ``None``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        embedding_dim: int = 0,
        pooling: str = "avg",
        num_parts: int = PAST_NUM_PARTS,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or num_classes < 0 or embedding_dim < 0:
            raise ConfigError(
                f"PCB head needs in_channels > 0, num_classes >= 0, embedding_dim >= 0; got "
                f"{in_channels}, {num_classes}, {embedding_dim}"
            )
        if isinstance(num_parts, bool) or int(num_parts) != num_parts or num_parts < 1:
            raise ConfigError(f"PCB num_parts must be a positive integer, got {num_parts!r}")
        pooling = str(pooling).lower()
        if pooling not in ("avg", "max"):
            raise ConfigError(f"PCB pooling must be 'avg' or 'max', got {pooling!r}")
        self.in_channels = int(in_channels)
        self.num_parts = int(num_parts)
        self.part_dim = int(embedding_dim) if embedding_dim > 0 else PAST_PART_DIM
        self.feat_dim = self.num_parts * self.part_dim
        self.pooling = pooling
        # one 1x1 convolution (no bias: BatchNorm follows) per part, stacked
        self.embedding = nn.Parameter(torch.empty(self.num_parts, self.part_dim, in_channels))
        for k in range(self.num_parts):  # kaiming fan_out of each (d, C) part weight
            nn.init.kaiming_normal_(self.embedding.data[k], mode="fan_out")
        self.bn = nn.BatchNorm1d(self.feat_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier: nn.Linear | None = None
        self.num_classes = 0
        self.reset_classifier(num_classes)

    def part_slice(self, k: int) -> slice:
        """Columns of part ``k`` (0 = top stripe) in ``feat``."""
        if not 0 <= k < self.num_parts:
            raise IndexError(f"part {k} out of range [0, {self.num_parts})")
        return slice(k * self.part_dim, (k + 1) * self.part_dim)

    def stripes(self, fmap: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, p, C)``: one pooled vector per horizontal stripe, top
        to bottom."""
        if fmap.dim() != 4:
            raise ValueError(f"PCB head expects a (N, C, H, W) map, got {tuple(fmap.shape)}")
        pool = F.adaptive_avg_pool2d if self.pooling == "avg" else F.adaptive_max_pool2d
        return pool(fmap, (self.num_parts, 1)).squeeze(3).transpose(1, 2)

    def reset_classifier(self, num_classes: int, weight: Tensor | None = None) -> None:
        """Replace the classifier by a fresh ``Linear(p * d, num_classes, bias=False)``.

        Without ``weight``: N(0, 0.001^2) initialisation. With ``weight`` of shape
        ``(num_classes, p * d)`` it is copied in: PAST eq. 7, ``W_c`` = the mean feature of
        cluster ``c`` (rows are classes, columns follow ``feat``'s part layout).
        ``num_classes=0`` removes the classifier.
        """
        num_classes = int(num_classes)
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        if num_classes == 0:
            if weight is not None:
                raise ConfigError("reset_classifier: a weight was given with num_classes=0")
            self.classifier, self.num_classes = None, 0
            return
        ref = self.bn.weight
        classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
        classifier.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if weight is None:
                nn.init.normal_(classifier.weight, std=0.001)
            else:
                if tuple(weight.shape) != (num_classes, self.feat_dim):
                    raise ConfigError(
                        f"reset_classifier: weight has shape {tuple(weight.shape)}, expected "
                        f"({num_classes}, {self.feat_dim}) = (classes, parts x part dim)"
                    )
                classifier.weight.copy_(weight.detach())
        self.classifier, self.num_classes = classifier, num_classes

    def forward(self, fmap: Tensor) -> dict[str, Tensor | None]:
        x = self.stripes(fmap)  # (N, p, C)
        emb = torch.einsum("npc,pdc->npd", x, self.embedding.to(x.dtype))
        feat = F.relu(self.bn(emb.reshape(x.shape[0], self.feat_dim)))
        logits = self.classifier(feat) if self.classifier is not None else None
        return {"feat": feat, "bn_feat": feat, "logits": logits}

    def extra_repr(self) -> str:
        return (
            f"num_parts={self.num_parts}, part_dim={self.part_dim}, pooling={self.pooling}, "
            f"num_classes={self.num_classes}"
        )
