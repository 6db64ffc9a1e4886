"""DBSCAN (MSPLR, section 3.3.2: ``eps`` and ``min_samples = 4``) on an exact
sparse radius neighbourhood graph, never an N x N matrix (see :func:`radius_neighbors_graph`),
or on a precomputed distance such as the k-reciprocal Jaccard CSR."""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ConfigError
from .cluster_base import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_PAIRS,
    as_tensor,
    check_metric,
    relabel,
    sorted_csr,
    within_radius,
)
from .settings import Metric

__all__ = ["dbscan_labels", "kth_neighbor_distance", "radius_neighbors_graph"]

# --------------------------------------------------------------------------------------------
# exact radius neighbourhood graph
# --------------------------------------------------------------------------------------------


def radius_neighbors_graph(
    features,
    radius: float,
    *,
    metric: Metric = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> sp.csr_matrix:
    """Every pair of rows within ``radius`` of each other, as a sparse distance graph.

    Exact (equal to thresholding the dense distance matrix computed in float64) and
    O(block_size^2 + stored pairs) in memory. Only the upper block triangle is computed and
    mirrored, so the graph is exactly symmetric.

    Args:
        features: (N, D) numpy array or tensor (a CUDA tensor is processed on its device).
        radius: keep pairs with distance ``<= radius``.
        metric: "euclidean" (``||a - b||``) or "cosine" (``1 - cos(a, b)``).
        block_size: rows per block of the matrix product.
        max_pairs: raise :class:`ConfigError` if more pairs than this fall within the radius.

    Returns:
        (N, N) CSR float64 matrix; the diagonal is stored (0), duplicates of a row are stored
        as explicit zeros, each row is ordered by distance. Missing entries are farther than
        ``radius``. Feed it to ``cluster(distance=graph, eps=e)`` with any ``e <= radius``.
    """
    check_metric(metric)
    if not radius >= 0:
        raise ConfigError(f"radius must be >= 0, got {radius!r}")
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size!r}")
    block_size = int(block_size)
    x = as_tensor(features)
    n, dim = x.shape
    inv_norm = None
    if metric == "cosine":
        # 1 - cos(a, b) = ||u - v||^2 / 2 for the unit rows u, v: threshold euclidean distances
        norm = x.to(torch.float64).norm(dim=1)
        inv_norm = 1.0 / torch.where(norm > 0, norm, torch.ones_like(norm))
        r_euc = math.sqrt(2.0 * min(float(radius), 2.0))
    else:
        r_euc = float(radius)
    x32 = x.to(torch.float32)
    if inv_norm is not None:
        x32 = x32 * inv_norm.to(torch.float32)[:, None]
    sq = (x32 * x32).sum(1)
    # float32 rounding margin of ||a||^2 + ||b||^2 - 2 a.b (a forward error bound of the dot
    # products, plus the rounding of float64 input to float32): candidates within it are
    # re-checked in float64, so no pair within the radius can be missed.
    rel = (2.0 * dim + 8.0) * 2.0**-24
    r2 = r_euc * r_euc

    pi_list, pj_list, total = [], [], 0
    for a in range(0, n, block_size):
        a1 = min(a + block_size, n)
        for b in range(a, n, block_size):
            b1 = min(b + block_size, n)
            s = sq[a:a1, None] + sq[None, b:b1]
            d2 = torch.addmm(s, x32[a:a1], x32[b:b1].T, beta=1.0, alpha=-2.0)
            cand = d2 <= r2 + rel * s + 1e-30
            if a == b:
                cand = torch.triu(cand)
            ii, jj = cand.nonzero(as_tuple=True)
            total += ii.numel()
            if total > max_pairs:
                raise ConfigError(
                    f"radius {radius} is too large for these features: more than {max_pairs} "
                    "pairs fall within it (images would be neighbours of thousands of "
                    "others); use a smaller eps"
                )
            pi_list.append((ii + a).cpu().numpy())
            pj_list.append((jj + b).cpu().numpy())
    pi = np.concatenate(pi_list).astype(np.int64)
    pj = np.concatenate(pj_list).astype(np.int64)

    # exact float64 distances of the candidates, from the row differences
    dist = np.empty(len(pi), dtype=np.float64)
    chunk = max(1, (16 << 20) // (8 * dim))  # <= 16 MB of float64 differences at once
    for s0 in range(0, len(pi), chunk):
        i = torch.from_numpy(pi[s0 : s0 + chunk]).to(x.device)
        j = torch.from_numpy(pj[s0 : s0 + chunk]).to(x.device)
        xi, xj = x[i].to(torch.float64), x[j].to(torch.float64)
        if inv_norm is not None:
            xi, xj = xi * inv_norm[i, None], xj * inv_norm[j, None]
        diff = xi - xj
        d = diff.pow(2).sum(1)
        d = d / 2.0 if metric == "cosine" else d.sqrt()
        dist[s0 : s0 + chunk] = d.cpu().numpy()
    keep = dist <= radius
    pi, pj, dist = pi[keep], pj[keep], dist[keep]
    off = pi != pj
    rows = np.concatenate([pi, pj[off]])
    cols = np.concatenate([pj, pi[off]])
    data = np.concatenate([dist, dist[off]])
    return sorted_csr(rows, cols, data, n)


def kth_neighbor_distance(
    features=None, *, distance=None, k: int = 4, metric: Metric = "euclidean", fill: float = 1.0
) -> np.ndarray:
    """Distance of every point to its k-th nearest neighbour, the point itself counted first.

    This is the smallest DBSCAN ``eps`` at which the point is a core point with
    ``min_samples = k`` (scikit-learn counts the point in its own neighbourhood), so the
    median of these values is the eps at which half the images are core points: a
    data-driven starting value for eps.

    Args:
        features: (N, D) features, or
        distance: an (N, N) precomputed distance, dense or sparse (missing entries mean
            ``fill``, 1 for the Jaccard distance; the diagonal counts as 0).
        k: the neighbour rank (``min_samples``).
        metric: for features: "euclidean" or "cosine".
    """
    if distance is not None:
        n = distance.shape[0]
        k = min(int(k), n)
        if sp.issparse(distance):
            d = distance.tocsr().copy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
                d.setdiag(0.0)
            out = np.full(n, float(fill))
            counts = np.diff(d.indptr)
            for i in np.flatnonzero(counts >= k):
                row = d.data[d.indptr[i] : d.indptr[i + 1]]
                out[i] = np.partition(row, k - 1)[k - 1]
            return out
        d = np.array(distance, dtype=np.float64, copy=True)
        np.fill_diagonal(d, 0.0)
        return np.partition(d, k - 1, axis=1)[:, k - 1]
    if features is None:
        raise ConfigError("kth_neighbor_distance needs features or a distance")
    check_metric(metric)
    from adaptreid.pseudo.topk import topk_neighbors

    x = as_tensor(features).to(torch.float32)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    k = min(int(k), x.shape[0])
    sqd, _ = topk_neighbors(x, k)
    d2 = np.asarray(sqd[:, k - 1], dtype=np.float64)
    return d2 / 2.0 if metric == "cosine" else np.sqrt(d2)


def dbscan_labels(
    features, distance, eps, min_samples, metric, block_size, max_pairs
) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    if distance is None:
        distance = radius_neighbors_graph(
            features, eps, metric=metric, block_size=block_size, max_pairs=max_pairs
        )
    if sp.issparse(distance):
        # fewer entries for scikit-learn to copy and sort; a point's neighbours are unchanged
        distance = within_radius(distance, eps)
    else:
        distance = np.asarray(distance, dtype=np.float64)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distance)
    return relabel(labels)
