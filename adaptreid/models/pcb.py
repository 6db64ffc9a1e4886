"""PCB head: ``p`` part regions, one embedding per region (PAST, section 3.1).

PAST "adopt[s] PCB as our model structure, in which ResNet-50 without last classification
layer is used as backbone", with "9 regions" ("Similar as EANet [...] Instead of using part
aligned pooling, we change to use even parts like PCB"), "the dimension of each embedding
layer [...] set to 256", and "following each embedding layer, we also implement the classifier
layer with one fully connected layer in the promoting stage". For evaluation "feature vectors
from embedding layers of 9 parts are normalized separately and then concatenated".

Layout of :class:`PCBHead` (backbone-agnostic: any feature map ``(N, C, H, W)``)::

    fmap --pool each part region (rows [start, end) x all columns)--> (N, p, C)
         --per-part 1x1 conv (C -> d, no bias) + BatchNorm + ReLU--> (N, p, d)
         --concatenate--> feat (N, p * d)      part k occupies columns [k d, (k + 1) d)
         --classifier (promoting stage / source training only)--> logits

Part regions (head option ``parts``; :func:`part_rows` lists the rows of each)
------------------------------------------------------------------------------
``"stripes"`` (the constructor default; what every checkpoint before this option used):
    ``p`` horizontal stripes, the rows of ``adaptive_{avg,max}_pool2d(fmap, (p, 1))``.
    PyTorch's adaptive bin ``k`` is rows ``[floor(k H / p), ceil((k + 1) H / p))``, so ``H``
    need not be a multiple of ``p`` but the bins then differ in size and neighbours can
    overlap. ResNet-50 with last stride 1 at 384 x 128 gives H = 24; its 9 bins are
    ``[0,3) [2,6) [5,8) [8,11) [10,14) [13,16) [16,19) [18,22) [21,24)``: sizes
    3,4,3,3,4,3,3,4,3, six of the eight neighbouring pairs sharing one row.
``"eanet"`` (the PAST paper's reading; 9 regions, ``num_parts`` must be 9):
    EANet's nine regions ("PAP_9P" of its released code, ``package/data/kpt_to_pap_mask.py``:
    head, upper torso, lower torso, upper leg, lower leg, shoes, upper half, lower half,
    whole) are cut at body keypoints. PAST replaces the keypoints by "even parts like PCB",
    as its released code does (``reid/models/pcb_pool.py``, ``PCBPool_nine``, with
    ``num_parts=6``): parts 0-5 are 6 even horizontal stripes, top to bottom; part 6 the
    upper half (stripes 0-2), part 7 the lower half (stripes 3-5; EANet's ``LOWER_HALF``,
    hip to bottom), part 8 the whole map.
``"past_code"``: the layout PAST's released code actually computes. Its second union is
    ``feat[:, :, 1 * stripe_h : 6 * stripe_h]``, stripes 1-5, not the lower half
    (``i * stripe_h : 3 * (i + 1) * stripe_h`` for ``i = 1``); otherwise as ``"eanet"``.
    For reproducing the released code's numbers.

Both 9-region layouts split H into 6 stripes at boundaries ``b_k = floor(k H / 6 + 1/2)``
(``k = 0..6``, rounded half up): for H a multiple of 6 these are the equal stripes of
H / 6 rows of EANet's ``PCBPool`` and PAST's ``PCBPool_nine`` (both assert that H is a
multiple of the number of stripes, and support nothing else); otherwise the
stripes still partition the map, their sizes differing by at most one row (H = 8, the map of
MobileNetV2 at 128 x 64 with last stride 1: rows ``[0,1) [1,3) [3,4) [4,5) [5,7) [7,8)``;
H = 24: 4 rows each), and the halves are exactly the unions ``[0, b_3)`` and ``[b_3, H)``.
For H < 6 some boundaries coincide; a region is then widened to one row
(``end = max(end, start + 1)``, ``start <= H - 1``) so that every region pools something.

Pooling (``pooling``) is a separate switch: EANet and PAST's released code max-pool
(``max_or_avg='max'`` in both), so a preset that follows them sets ``model.pooling: max``
together with ``parts: eanet``; the head does not tie the two (``pooling`` is passed to every
head, ``avg`` by default, so it cannot tell an explicit ``avg`` from none), and ``avg`` with
``eanet`` stays available as an ablation.

The classifier (head option ``classifier``)
-------------------------------------------
``"per_part"`` (the PAST paper's reading, section 3.1; also PCB's and PAST's released code):
    ``p`` bias-free fully connected layers ``Linear(d, C)``, one after each part embedding,
    held as one ``(p, C, d)`` weight (:class:`PartClassifiers`). ``logits`` has shape
    ``(N, p, C)``: part ``k``'s logits ``W_k^T x_k`` feed their own softmax (eq. 6 per
    part); the losses sum the ``p`` cross-entropies (see
    :func:`adaptreid.losses.cross_entropy.parts_cross_entropy`). PAST's released code gives
    each of them a bias as well (``nn.Linear`` default); eq. 6 has none, and neither has ours.
``"joint"`` (the constructor default; every checkpoint before this option): one
    ``Linear(p * d, C, bias=False)`` over the concatenation, ``logits`` of shape ``(N, C)``.
    Its weight is the stack ``[W^1 ... W^p]`` of one FC per part, but its logits are the
    *sum* of the per-part logits fed to *one* softmax: eq. 6-7 read literally with a single
    ``W in R^{d x C}``.

:meth:`PCBHead.reset_classifier` takes eq. 7's ``(C, p * d)`` weight in both readings: the
cluster means of ``feat`` (the concatenated per-part embeddings; any per-part normalisation is
the caller's choice). ``"joint"`` copies it whole; ``"per_part"`` gives part ``k``'s classifier
columns ``[k d, (k + 1) d)``, i.e. the cluster means of part ``k``'s embedding, as PAST's
released code does (``cls_params[:, i * embedding_dim:(i + 1) * embedding_dim]``).

Other details
-------------
* The 1x1 convolutions of the ``p`` parts are held in one ``(p, d, C)`` weight and applied
  with one ``einsum``; the ``p`` BatchNorms are one ``BatchNorm1d(p * d)`` over the
  concatenation (per-channel statistics, so identical to ``p`` separate BatchNorms).
* ``feat`` and ``bn_feat`` are the same tensor: the PCB embedding already ends with its own
  BatchNorm (+ ReLU), there is no separate BNNeck. The model's eval output is therefore the
  concatenated embedding, and :func:`adaptreid.engine.extract.extract_features` normalises each
  of its ``num_parts`` chunks separately (section 3.1); with the cosine metric the distance is
  then one minus the mean of the per-part cosines.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .build import HEADS

__all__ = [
    "CLASSIFIERS",
    "PART_LAYOUTS",
    "PAST_NUM_PARTS",
    "PAST_PART_DIM",
    "PCBHead",
    "PartClassifiers",
    "part_rows",
]

#: PAST section 3.1: 9 regions, a 256-d embedding per region.
PAST_NUM_PARTS = 9
PAST_PART_DIM = 256
#: values of the ``parts`` head option (the first is the constructor default).
PART_LAYOUTS = ("stripes", "eanet", "past_code")
#: values of the ``classifier`` head option (the first is the constructor default).
CLASSIFIERS = ("joint", "per_part")
_EANET_STRIPES = 6


def part_rows(layout: str, height: int, num_parts: int = PAST_NUM_PARTS) -> list[tuple[int, int]]:
    """Rows ``[start, end)`` of each part region of a feature map of ``height`` rows (every
    region spans all columns); the definitions are in the module docstring.

    ``layout="stripes"`` gives PyTorch's adaptive bins for ``num_parts`` stripes;
    ``"eanet"`` / ``"past_code"`` give 9 regions (``num_parts`` must be 9).
    """
    if isinstance(height, bool) or int(height) != height or height < 1:
        raise ValueError(f"feature map height must be a positive integer, got {height!r}")
    h = int(height)
    if layout == "stripes":
        p = int(num_parts)
        return [((k * h) // p, -((-(k + 1) * h) // p)) for k in range(p)]  # floor, ceil
    if layout not in PART_LAYOUTS:
        raise ConfigError(f"PCB parts must be one of {PART_LAYOUTS}, got {layout!r}")
    if num_parts != PAST_NUM_PARTS:
        raise ConfigError(
            f"PCB parts={layout!r} has 9 regions (6 stripes, 2 unions, the whole map); "
            f"num_parts must be 9 or left out, got {num_parts}"
        )
    s = _EANET_STRIPES
    b = [(2 * k * h + s) // (2 * s) for k in range(s + 1)]  # floor(k h / 6 + 1/2)

    def region(start: int, end: int) -> tuple[int, int]:
        start = min(start, h - 1)
        return start, max(end, start + 1)

    rows = [region(b[k], b[k + 1]) for k in range(s)]
    rows.append(region(0, b[3]))  # upper half: stripes 0-2
    rows.append(region(b[3] if layout == "eanet" else b[1], h))  # lower half | stripes 1-5
    rows.append((0, h))
    return rows


def _height(fmap: Tensor) -> int:
    """``fmap``'s H as a Python int. While tracing (ONNX / TorchScript export) the shape is a
    traced value; the exported graph has a fixed input size (``adaptreid.export.onnx``: only the
    batch axis is dynamic), so its regions are fixed too and the tracer's warning about
    reading it as an int is expected."""
    if not torch.jit.is_tracing():
        return int(fmap.shape[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(fmap.shape[2])


class PartClassifiers(nn.Module):
    """``p`` bias-free fully connected classifiers, one per part (PAST section 3.1).

    ``weight`` has shape ``(p, C, d)``: ``weight[k]`` is the weight of part ``k``'s
    ``Linear(d, C, bias=False)``. ``forward`` maps ``feat`` ``(N, p * d)`` (part ``k`` in
    columns ``[k d, (k + 1) d)``) to logits ``(N, p, C)`` with
    ``logits[:, k] = feat_k @ weight[k].T``.
    """

    def __init__(self, num_parts: int, part_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_parts, self.part_dim, self.num_classes = num_parts, part_dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_parts, num_classes, part_dim))
        self.register_parameter("bias", None)

    def forward(self, feat: Tensor) -> Tensor:
        x = feat.reshape(feat.shape[0], self.num_parts, self.part_dim)
        return torch.einsum("npd,pcd->npc", x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"parts={self.num_parts}, in_features={self.part_dim}, classes={self.num_classes}"


@HEADS.register("pcb")
class PCBHead(nn.Module):
    """Part-based head (PCB, Sun et al. 2018, as PAST section 3.1 uses it).

    Args:
        in_channels: channels of the backbone's feature map (2048 for ResNet-50, 1280 for
            MobileNetV2).
        num_classes: classifier outputs; 0 for none (``logits`` is ``None``; PAST's
            conservative stage).
        embedding_dim: per-part embedding size ``d``; 0 means 256 (PAST).
        pooling: ``"avg"`` or ``"max"`` pooling within each part region.
        num_parts: number of parts ``p``: the stripes of ``parts="stripes"``; 9 (the only
            value allowed) for the 9-region layouts.
        parts: ``"stripes"`` (default), ``"eanet"`` or ``"past_code"``: the part regions
            (module docstring).
        classifier: ``"joint"`` (default; ``logits`` ``(N, C)``) or ``"per_part"``
            (``logits`` ``(N, p, C)``): module docstring.

    The defaults of ``parts`` and ``classifier`` are the layout of every PCB checkpoint
    written before these options existed, so an old ``arch`` rebuilds the same network; the
    PAST presets choose ``parts: eanet`` and ``classifier: per_part`` explicitly.

    Attributes: ``num_parts``, ``part_dim`` (= d), ``feat_dim`` (= p * d), ``num_classes``,
    ``parts``, ``classifier_type``. Submodules / parameters: ``embedding`` (``(p, d, C)``
    weight), ``bn`` (``BatchNorm1d(p * d)``), ``classifier`` (``Linear(p * d, num_classes,
    bias=False)``, :class:`PartClassifiers`, or ``None``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        embedding_dim: int = 0,
        pooling: str = "avg",
        num_parts: int = PAST_NUM_PARTS,
        parts: str = "stripes",
        classifier: str = "joint",
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
        parts = str(parts).lower()
        if parts not in PART_LAYOUTS:
            raise ConfigError(f"PCB parts must be one of {PART_LAYOUTS}, got {parts!r}")
        classifier = str(classifier).lower()
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"PCB classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if parts != "stripes":
            part_rows(parts, 1, int(num_parts))  # validates num_parts for the layout
        self.in_channels = int(in_channels)
        self.num_parts = int(num_parts)
        self.part_dim = int(embedding_dim) if embedding_dim > 0 else PAST_PART_DIM
        self.feat_dim = self.num_parts * self.part_dim
        self.pooling = pooling
        self.parts = parts
        self.classifier_type = classifier
        # one 1x1 convolution (no bias: BatchNorm follows) per part, stacked
        self.embedding = nn.Parameter(torch.empty(self.num_parts, self.part_dim, in_channels))
        for k in range(self.num_parts):  # kaiming fan_out of each (d, C) part weight
            nn.init.kaiming_normal_(self.embedding.data[k], mode="fan_out")
        self.bn = nn.BatchNorm1d(self.feat_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier: nn.Module | None = None
        self.num_classes = 0
        self.reset_classifier(num_classes)

    def part_slice(self, k: int) -> slice:
        """Columns of part ``k`` in ``feat`` (the order of :func:`part_rows`)."""
        if not 0 <= k < self.num_parts:
            raise IndexError(f"part {k} out of range [0, {self.num_parts})")
        return slice(k * self.part_dim, (k + 1) * self.part_dim)

    def pool_parts(self, fmap: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, p, C)``: one pooled vector per part region, in the order
        of :func:`part_rows`."""
        if fmap.dim() != 4:
            raise ValueError(f"PCB head expects a (N, C, H, W) map, got {tuple(fmap.shape)}")
        if self.parts == "stripes":
            pool = F.adaptive_avg_pool2d if self.pooling == "avg" else F.adaptive_max_pool2d
            return pool(fmap, (self.num_parts, 1)).squeeze(3).transpose(1, 2)
        rows = part_rows(self.parts, _height(fmap), self.num_parts)
        if self.pooling == "avg":
            pooled = [fmap[:, :, a:b].mean(dim=(2, 3)) for a, b in rows]
        else:
            pooled = [fmap[:, :, a:b].amax(dim=(2, 3)) for a, b in rows]
        return torch.stack(pooled, dim=1)

    def reset_classifier(self, num_classes: int, weight: Tensor | None = None) -> None:
        """Replace the classifier by a fresh one for ``num_classes`` classes (bias-free).

        Without ``weight``: N(0, 0.001^2) initialisation. With ``weight`` of shape
        ``(num_classes, p * d)`` (rows are classes, columns follow ``feat``'s part layout) it
        is copied in: PAST eq. 7, ``W_c`` = the mean feature of cluster ``c``. The joint
        classifier takes it whole; the per-part classifier ``k`` takes columns
        ``[k d, (k + 1) d)``. ``num_classes=0`` removes the classifier.
        """
        num_classes = int(num_classes)
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        if num_classes == 0:
            if weight is not None:
                raise ConfigError("reset_classifier: a weight was given with num_classes=0")
            self.classifier, self.num_classes = None, 0
            return
        if weight is not None and tuple(weight.shape) != (num_classes, self.feat_dim):
            raise ConfigError(
                f"reset_classifier: weight has shape {tuple(weight.shape)}, expected "
                f"({num_classes}, {self.feat_dim}) = (classes, parts x part dim)"
            )
        if self.classifier_type == "joint":
            classifier: nn.Module = nn.Linear(self.feat_dim, num_classes, bias=False)
        else:
            classifier = PartClassifiers(self.num_parts, self.part_dim, num_classes)
        ref = self.bn.weight
        classifier.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if weight is None:
                nn.init.normal_(classifier.weight, std=0.001)
            elif self.classifier_type == "joint":
                classifier.weight.copy_(weight.detach())
            else:  # (C, p d) -> (p, C, d): part k gets columns [k d, (k + 1) d)
                w = weight.detach().reshape(num_classes, self.num_parts, self.part_dim)
                classifier.weight.copy_(w.transpose(0, 1))
        self.classifier, self.num_classes = classifier, num_classes

    def forward(self, fmap: Tensor) -> dict[str, Tensor | None]:
        x = self.pool_parts(fmap)  # (N, p, C)
        emb = torch.einsum("npc,pdc->npd", x, self.embedding.to(x.dtype))
        feat = F.relu(self.bn(emb.reshape(x.shape[0], self.feat_dim)))
        logits = self.classifier(feat) if self.classifier is not None else None
        return {"feat": feat, "bn_feat": feat, "logits": logits}

    def extra_repr(self) -> str:
        return (
            f"parts={self.parts}, num_parts={self.num_parts}, part_dim={self.part_dim}, "
            f"pooling={self.pooling}, classifier={self.classifier_type}, "
            f"num_classes={self.num_classes}"
        )
