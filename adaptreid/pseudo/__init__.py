"""Pseudo-labels: pure functions on feature arrays (no models, no files)."""

from adaptreid.pseudo.kreciprocal import (
    jaccard_distance,
    k_reciprocal_encoding,
    k_reciprocal_rerank,
    sort_rows_by_distance,
    sparse_distance_to_dense,
)
from adaptreid.pseudo.topk import topk_neighbors

__all__ = [
    "jaccard_distance",
    "k_reciprocal_encoding",
    "k_reciprocal_rerank",
    "sort_rows_by_distance",
    "sparse_distance_to_dense",
    "topk_neighbors",
]
