"""Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

The same loss serves both papers:

* MSPLR (section 3.6.1, eq. 5): ``L_tri`` in ``L = L_tri + L_ID + 0.005 L_c``;
* PAST (section 2.2, eq. 3): the clustering-based triplet loss (CTL) is exactly
  this loss computed on pseudo-labels (cluster ids).

For every anchor ``a`` of a batch the hardest positive (the farthest sample with the same
label, the anchor itself excluded) and the hardest negative (the closest sample with another
label) are mined, and

    hinge:        l_a = max(0, d(a, p) - d(a, n) + m)
    soft margin:  l_a = softplus(d(a, p) - d(a, n)) = log(1 + exp(d(a, p) - d(a, n)))

with ``d`` the (non-squared) euclidean distance, as written in PAST eq. 3, or (``metric="cosine"``)
the cosine distance ``1 - cos(a, b)``, the distance of PAST's released code (its per-part CTL,
:mod:`adaptreid.losses.past_loss`). The loss is the
*mean* of ``l_a`` over the anchors that have both a positive and a negative in the batch
(PAST eq. 3 writes a sum; the mean only rescales the learning rate and is what every public
implementation does). Anchors without a positive or without a negative are skipped; a batch
with no valid anchor gives a zero loss that is still connected to the graph, so
``backward()`` works and gives zero gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "TRIPLET_METRICS",
    "TripletLoss",
    "TripletResult",
    "batch_hard_triplet",
    "pairwise_cosine",
    "pairwise_euclidean",
]

_EPS = 1e-12
#: distances of the batch-hard triplet loss (``metric``).
TRIPLET_METRICS = ("euclidean", "cosine")


class TripletResult(NamedTuple):
    """What :func:`batch_hard_triplet` returns.

    ``loss`` is the differentiable scalar; the other fields are detached, for logging.
    """

    loss: Tensor
    #: fraction of valid anchors whose triplet still violates ``d_ap - d_an + m > 0``
    #: (``m = 0`` for the soft margin); 0.0 when there is no valid anchor.
    active_fraction: float
    #: number of anchors that have at least one positive and one negative in the batch.
    num_valid: int
    #: per-anchor hardest-positive / hardest-negative distances (valid anchors only).
    dist_ap: Tensor
    dist_an: Tensor


def pairwise_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Euclidean distance matrix ``||x_i - y_j||_2``, shape ``(len(x), len(y))``.

    Computed as ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, min=1e-12))``: the clamp keeps the
    square root (and its gradient) finite where two features coincide, as in common
    re-ID practice (reid-strong-baseline, fast-reid).
    """
    y = x if y is None else y
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
    return sq.clamp_min(_EPS).sqrt()


def pairwise_cosine(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Cosine distance matrix ``1 - cos(x_i, y_j)`` (in ``[0, 2]``), shape ``(len(x), len(y))``:
    the rows are L2-normalised first, as PAST's released code does before its cosine
    distance (``reid/eval/torch_distance.py``, ``compute_dist``)."""
    xn = F.normalize(x, dim=1)
    yn = xn if y is None else F.normalize(y, dim=1)
    return 1.0 - xn @ yn.t()


def batch_hard_triplet(
    feats: Tensor,
    labels: Tensor,
    margin: float = 0.3,
    soft_margin: bool = False,
    normalize: bool = False,
    metric: str = "euclidean",
) -> TripletResult:
    """Batch-hard triplet loss (Hermans et al. 2017; PAST eq. 3 "CTL"; MSPLR eq. 5 ``L_tri``).

    Args:
        feats: ``(B, D)`` features.
        labels: ``(B,)`` integer (pseudo-)labels.
        margin: ``m`` of the hinge; ignored when ``soft_margin`` is true.
        soft_margin: use ``softplus(d_ap - d_an)`` instead of the hinge.
        normalize: L2-normalise the features first (distances on the unit sphere).
        metric: ``"euclidean"`` (``||a - b||_2``) or ``"cosine"`` (``1 - cos(a, b)``).

    Returns:
        A :class:`TripletResult` (``loss``, ``active_fraction``, ``num_valid``, ``dist_ap``,
        ``dist_an``).
    """
    if feats.dim() != 2:
        raise ValueError(f"feats must be (B, D), got shape {tuple(feats.shape)}")
    labels = labels.reshape(-1)
    if labels.numel() != feats.size(0):
        raise ValueError(f"{labels.numel()} labels for {feats.size(0)} features")
    if metric not in TRIPLET_METRICS:
        raise ConfigError(f"triplet metric must be one of {TRIPLET_METRICS}, got {metric!r}")
    if normalize:
        feats = F.normalize(feats, dim=1)

    dist = pairwise_euclidean(feats) if metric == "euclidean" else pairwise_cosine(feats)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=feats.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)

    num_valid = int(valid.sum())
    if num_valid == 0:
        empty = feats.new_zeros(0).detach()
        return TripletResult(feats.sum() * 0.0, 0.0, 0, empty, empty)

    # Hardest positive: max over positives (non-positives pushed to -inf);
    # hardest negative: min over negatives (non-negatives pushed to +inf).
    neg_inf = torch.finfo(dist.dtype).min
    pos_inf = torch.finfo(dist.dtype).max
    dist_ap = dist.masked_fill(~pos_mask, neg_inf).max(1).values[valid]
    dist_an = dist.masked_fill(~neg_mask, pos_inf).min(1).values[valid]

    diff = dist_ap - dist_an
    if soft_margin:
        per_anchor = F.softplus(diff)
        active = diff > 0
    else:
        per_anchor = F.relu(diff + margin)
        active = diff + margin > 0
    return TripletResult(
        per_anchor.mean(),
        float(active.float().mean()),
        num_valid,
        dist_ap.detach(),
        dist_an.detach(),
    )


class TripletLoss(nn.Module):
    """Batch-hard triplet loss as an ``nn.Module`` (see :func:`batch_hard_triplet`).

    ``forward`` returns the scalar loss; the logging statistics of the last call are kept in
    :attr:`last_stats` (a :class:`TripletResult` whose tensors are detached).

    Example::

        crit = TripletLoss(margin=0.3)
        loss = crit(feats, pseudo_labels)
        log(active=crit.last_stats.active_fraction)
    """

    def __init__(
        self,
        margin: float = 0.3,
        soft_margin: bool = False,
        normalize: bool = False,
        metric: str = "euclidean",
    ):
        super().__init__()
        if not soft_margin and margin < 0:
            raise ConfigError(f"triplet margin must be >= 0, got {margin}")
        if metric not in TRIPLET_METRICS:
            raise ConfigError(f"triplet metric must be one of {TRIPLET_METRICS}, got {metric!r}")
        self.margin = float(margin)
        self.soft_margin = bool(soft_margin)
        self.normalize = bool(normalize)
        self.metric = metric
        self.last_stats: TripletResult | None = None

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        res = batch_hard_triplet(
            feats, labels, self.margin, self.soft_margin, self.normalize, self.metric
        )
        self.last_stats = res._replace(loss=res.loss.detach())
        return res.loss

    def extra_repr(self) -> str:
        m = "soft" if self.soft_margin else f"{self.margin}"
        return f"margin={m}, normalize={self.normalize}, metric={self.metric}"
