"""Losses of the methods (MSPLR, PAST, cluster contrast).

* :class:`TripletLoss` / :func:`batch_hard_triplet`: batch-hard triplet (Hermans et al. 2017),
  MSPLR eq. 5 ``L_tri`` and PAST eq. 3 (CTL); hinge or soft margin.
* :class:`CenterLoss` + :class:`CenterOptimizer`: centre loss (Wen et al. 2016) in its
  bag-of-tricks form, MSPLR eq. 5 ``0.005 L_c``, centres learnt by their own SGD.
* :class:`CrossEntropyLabelSmooth`: label-smoothed cross-entropy, MSPLR eq. 5 ``L_ID``
  (``epsilon=0`` gives PAST's promoting-stage softmax cross-entropy, eq. 6); for per-part
  logits ``(B, p, C)`` the sum of the parts' losses (:func:`parts_cross_entropy`).
* :class:`RankingTripletLoss` / :func:`sample_rtl_pairs` / :func:`conservative_loss`:
  PAST's ranking-based triplet loss (eq. 4) and conservative-stage loss (eq. 5).
* :mod:`adaptreid.losses.memory`: contrastive losses against a momentum-updated memory
  (cluster contrast's ClusterNCE, CAP's camera-aware proxies) and :class:`~adaptreid.losses.
  memory.MemoryAugmented` (a criterion plus a memory term: MSPLR's ``method.memory``).
"""

from .center import CenterLoss, CenterOptimizer, rescale_center_grad
from .cross_entropy import (
    CrossEntropyLabelSmooth,
    cross_entropy_label_smooth,
    parts_cross_entropy,
)
from .ranking_triplet import (
    RankingTripletLoss,
    conservative_loss,
    ranking_triplet_loss,
    sample_rtl_pairs,
)
from .triplet import TripletLoss, TripletResult, batch_hard_triplet, pairwise_euclidean

__all__ = [
    "CenterLoss",
    "CenterOptimizer",
    "CrossEntropyLabelSmooth",
    "RankingTripletLoss",
    "TripletLoss",
    "TripletResult",
    "batch_hard_triplet",
    "conservative_loss",
    "cross_entropy_label_smooth",
    "pairwise_euclidean",
    "parts_cross_entropy",
    "ranking_triplet_loss",
    "rescale_center_grad",
    "sample_rtl_pairs",
]
