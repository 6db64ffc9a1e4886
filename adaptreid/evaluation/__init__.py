"""Evaluation: pure functions on arrays/tensors (no models, no files).

* :func:`pairwise_distance`: euclidean / squared euclidean / cosine distances, in blocks.
* :func:`evaluate_rank`: CMC, mAP and mINP under the Market-1501 protocol (and the old CUHK03
  single-gallery-shot CMC), vectorised over query chunks; returns a :class:`RankResult`.
* :func:`top_k_matches`: the ranked lists behind the metrics, for rank-list pictures.
* :func:`map_interval`, :func:`map_difference_interval`: how far an mAP, or two models'
  difference, moves when the test identities are resampled (a cluster bootstrap).

k-reciprocal re-ranking (``adaptreid evaluate --rerank``) is
:func:`adaptreid.pseudo.kreciprocal.k_reciprocal_rerank`, the blocked sparse engine the
pseudo-labels use too.
"""

from .bootstrap import MapInterval, ap_from_record, map_difference_interval, map_interval
from .distance import pairwise_distance
from .metrics import RankResult, SingleGalleryShot, evaluate_rank
from .ranklist import top_k_matches

__all__ = [
    "MapInterval",
    "RankResult",
    "SingleGalleryShot",
    "ap_from_record",
    "evaluate_rank",
    "map_difference_interval",
    "map_interval",
    "pairwise_distance",
    "top_k_matches",
]
