"""PAST's ranking-based triplet loss, RTL (Zhang et al. 2019, section 2.2, eq. 4),
its (positive, negative) sampler, and the conservative-stage loss of eq. 5.

Ranking positions
-----------------
PAST sorts each row of the k-reciprocal Jaccard distance matrix into the ranking score
matrix ``D_R`` (eq. 2); ``x~_j`` is the j-th most similar sample. Here the ranking is given
as ``ranked_neighbors``: row ``i`` lists the dataset indices of the neighbours of sample ``i``
sorted by increasing Jaccard distance, **with sample i itself removed**. Ranks are 1-based:

    rank r  <->  ranked_neighbors[i, r - 1]       (rank 1 = nearest other sample)

For an anchor, the positive is drawn uniformly from ranks ``1..eta`` (the "top eta") and the
negative uniformly from ranks ``eta+1..2*eta`` (the interval ``(eta, 2 eta]``), independently.
The soft margin of eq. 4 is ``|P_p - P_n| / eta * m`` with ``P_p, P_n`` these 1-based ranks,
so it lies in ``[m / eta, (2 eta - 1) / eta * m]``: a pair of neighbours at adjacent ranks
is barely pushed apart, a pair far apart in the ranking nearly by ``2 m``. (Counting ranks
from 0 would not change the margin, which depends on the difference only.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "RankingTripletLoss",
    "conservative_loss",
    "ranking_triplet_loss",
    "sample_rtl_pairs",
]

_EPS = 1e-12


def sample_rtl_pairs(
    ranked_neighbors: np.ndarray,
    anchors: np.ndarray,
    eta: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one (positive, negative) pair per anchor for RTL (PAST section 2.2, eq. 4).

    Args:
        ranked_neighbors: ``(N, R)`` integer array, ``R >= 2 * eta``; row ``i`` holds the
            neighbours of sample ``i`` by increasing Jaccard distance, ``i`` itself excluded.
        anchors: ``(B,)`` dataset indices of the anchors (rows of ``ranked_neighbors``).
        eta: maximum rank of a positive (20 in PAST).
        rng: a ``numpy.random.Generator``; the draw is deterministic given its state.

    Returns:
        ``(pos_idx, neg_idx, pos_rank, neg_rank)``, each an ``int64`` array of shape ``(B,)``:
        the dataset indices of the positives and negatives and their 1-based ranks,
        ``pos_rank`` uniform in ``1..eta`` and ``neg_rank`` uniform in ``eta+1..2*eta``.
    """
    if isinstance(eta, bool) or int(eta) != eta or eta < 1:
        raise ConfigError(f"RTL eta must be a positive integer, got {eta!r}")
    eta = int(eta)
    ranked = np.asarray(ranked_neighbors)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(
            f"ranked_neighbors must be a 2-D integer array, got {ranked.dtype} {ranked.shape}"
        )
    if ranked.shape[1] < 2 * eta:
        raise ValueError(
            f"ranked_neighbors has {ranked.shape[1]} columns; RTL with eta={eta} needs "
            f">= 2*eta = {2 * eta} ranked neighbours per sample"
        )
    anchors = np.asarray(anchors, dtype=np.int64).reshape(-1)
    if anchors.size and (anchors.min() < 0 or anchors.max() >= ranked.shape[0]):
        raise ValueError(f"anchor indices must lie in [0, {ranked.shape[0]})")

    pos_rank = rng.integers(1, eta + 1, size=anchors.size, dtype=np.int64)
    neg_rank = rng.integers(eta + 1, 2 * eta + 1, size=anchors.size, dtype=np.int64)
    pos_idx = ranked[anchors, pos_rank - 1].astype(np.int64)
    neg_idx = ranked[anchors, neg_rank - 1].astype(np.int64)
    if anchors.size and (pos_idx.min() < 0 or neg_idx.min() < 0):
        raise ValueError("ranked_neighbors has negative (padding) entries within the top 2*eta")
    return pos_idx, neg_idx, pos_rank, neg_rank


def _pair_dist(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Row-wise distance: euclidean, with the same clamp as the batch-hard loss, or cosine
    (``1 - cos``, rows L2-normalised first, as PAST's released code's
    ``compute_correspond_dist``)."""
    if metric == "cosine":
        return 1.0 - (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1)
    return (x - y).pow(2).sum(1).clamp_min(_EPS).sqrt()


def _as_rank_tensor(rank: Tensor | np.ndarray, device: torch.device) -> Tensor:
    if isinstance(rank, Tensor):
        return rank.to(device).reshape(-1)
    return torch.as_tensor(np.asarray(rank), device=device).reshape(-1)


def ranking_triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    pos_rank: Tensor | np.ndarray,
    neg_rank: Tensor | np.ndarray,
    eta: int,
    margin: float = 0.3,
    metric: str = "euclidean",
) -> Tensor:
    """RTL, PAST eq. 4, averaged over anchors:

        L_RTL = 1/B * sum_a max(0, |P_p - P_n| / eta * m + ||f_a - f_p||_2 - ||f_a - f_n||_2)

    (``metric="cosine"``: ``d(a, b) = 1 - cos(a, b)`` in place of ``||a - b||_2``.)

    Args:
        anchor, positive, negative: ``(B, D)`` features of the anchors and of their sampled
            positives and negatives (see :func:`sample_rtl_pairs`).
        pos_rank, neg_rank: ``(B,)`` 1-based ranking positions ``P_p``, ``P_n``.
        eta: the ``eta`` used for sampling (normalises the soft margin).
        margin: the base margin ``m`` (0.3 in PAST, same as CTL).
        metric: ``"euclidean"`` (eq. 4 as printed) or ``"cosine"`` (PAST's released code).
    """
    if metric not in ("euclidean", "cosine"):
        raise ConfigError(f"RTL metric must be 'euclidean' or 'cosine', got {metric!r}")
    if eta < 1:
        raise ConfigError(f"RTL eta must be >= 1, got {eta}")
    if anchor.dim() != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise ValueError(
            "anchor, positive and negative must be (B, D) of one shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    p = _as_rank_tensor(pos_rank, anchor.device)
    n = _as_rank_tensor(neg_rank, anchor.device)
    if p.numel() != anchor.size(0) or n.numel() != anchor.size(0):
        raise ValueError(f"need {anchor.size(0)} ranks, got {p.numel()} and {n.numel()}")
    if anchor.size(0) == 0:
        return anchor.sum() * 0.0
    soft_margin = (p - n).abs().to(anchor.dtype) / eta * margin
    d_ap = _pair_dist(anchor, positive, metric)
    d_an = _pair_dist(anchor, negative, metric)
    return F.relu(soft_margin + d_ap - d_an).mean()


class RankingTripletLoss(nn.Module):
    """``nn.Module`` form of :func:`ranking_triplet_loss` (PAST eq. 4), with ``eta`` and ``m``."""

    def __init__(self, eta: int = 20, margin: float = 0.3):
        super().__init__()
        if isinstance(eta, bool) or int(eta) != eta or eta < 1:
            raise ConfigError(f"RTL eta must be a positive integer, got {eta!r}")
        if margin < 0:
            raise ConfigError(f"RTL margin must be >= 0, got {margin}")
        self.eta = int(eta)
        self.margin = float(margin)

    def sample(
        self, ranked_neighbors: np.ndarray, anchors: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:func:`sample_rtl_pairs` with this loss's ``eta``."""
        return sample_rtl_pairs(ranked_neighbors, anchors, self.eta, rng)

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor,
        negative: Tensor,
        pos_rank: Tensor | np.ndarray,
        neg_rank: Tensor | np.ndarray,
    ) -> Tensor:
        return ranking_triplet_loss(
            anchor, positive, negative, pos_rank, neg_rank, self.eta, self.margin
        )

    def extra_repr(self) -> str:
        return f"eta={self.eta}, margin={self.margin}"


def conservative_loss(rtl: Tensor, ctl: Tensor, lam: float = 0.5) -> Tensor:
    """PAST's conservative-stage loss, eq. 5: ``L_C = L_RTL + lambda * L_CTL``.

    ``lambda = 0.5`` is PAST's best value (section 3.4, "Analysis of the Loss Weight").
    """
    if lam < 0:
        raise ConfigError(f"conservative loss weight lambda must be >= 0, got {lam}")
    return rtl + lam * ctl
