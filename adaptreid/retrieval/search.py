"""Ranked gallery matches of query features: pure functions on arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.distance import pairwise_distance
from ..evaluation.metrics import stable_argsort_rows

__all__ = ["Rerank", "SearchResult", "search"]


@dataclass(frozen=True)
class Rerank:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017): the distance
    ``(1 - lambda_value) d_Jaccard + lambda_value d_original`` over ``k1`` reciprocal
    neighbours, the Jaccard term averaged over ``k2`` neighbours."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class SearchResult:
    """``indices[i, j]``: the gallery row of query ``i``'s ``j``-th match (nearest first;
    ``-1`` pads a row with fewer matches), ``distances[i, j]`` its distance (``inf`` on
    padding)."""

    indices: np.ndarray
    distances: np.ndarray


def search(
    query_feats,
    gallery_feats,
    top: int = 20,
    *,
    metric: str = "euclidean",
    rerank: Rerank | bool | None = None,
    exclude: np.ndarray | None = None,
) -> SearchResult:
    """The ``top`` nearest gallery rows of each query row, ascending distance, ties by
    gallery order (the order the evaluation ranks by).

    ``metric``: ``euclidean`` or ``cosine`` (the distance the model was trained for).
    ``rerank``: a :class:`Rerank` (``True``: its defaults) ranks by the k-reciprocal
    re-ranked distance instead.
    ``exclude``: optional ``(Q, G)`` bool mask of pairs never returned (e.g. a query's own
    image when it is also in the gallery)."""
    q = np.asarray(query_feats, dtype=np.float32)
    g = np.asarray(gallery_feats, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query features {q.shape} and gallery features {g.shape} must be (Q, D) and (G, D) "
            "with the same D"
        )
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if rerank:
        from ..pseudo.kreciprocal import k_reciprocal_rerank as k_reciprocal

        r = Rerank() if rerank is True else rerank
        dist = np.asarray(
            k_reciprocal(q, g, k1=r.k1, k2=r.k2, lambda_value=r.lambda_value), dtype=np.float64
        )
    else:
        dist = pairwise_distance(q, g, metric=metric)
        dist = np.asarray(dist.numpy() if hasattr(dist, "numpy") else dist, dtype=np.float64)
    if exclude is not None:
        dist = np.where(np.asarray(exclude, dtype=bool), np.inf, dist)
    order = stable_argsort_rows(dist)[:, :top]
    d = np.take_along_axis(dist, order, axis=1)
    order = np.where(np.isfinite(d), order, -1)
    pad = top - order.shape[1]
    if pad > 0:
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
    return SearchResult(order.astype(np.int64), np.where(order >= 0, d, np.inf))
