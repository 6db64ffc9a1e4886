"""Clustering of target features into pseudo identities, behind one function: :func:`cluster`.

Three algorithms, as the two seed papers use them:

* **DBSCAN** (MSPLR, seed 000, section 3.3.2; ``eps`` and ``min_samples = 4``), either on the
  euclidean (or cosine) distance of features, or on a precomputed distance such as the sparse
  k-reciprocal Jaccard distance of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`.
  Outliers get the label -1.
* **k-means** (MSPLR section 3.3.1) with ``k = floor(N / 15)`` by default (eq. 1). No outliers.
* **HDBSCAN** (PAST, seed 003, section 2.2) with ``min_cluster_size = S_min`` (10 in the
  paper), on a precomputed distance (the Jaccard distance: PAST's ranking score matrix, eq. 2,
  is each row of it sorted, which changes no neighbourhood) or on features.

Exact and O(N x neighbours) in memory: euclidean DBSCAN never forms the N x N distance matrix.
:func:`radius_neighbors_graph` computes, in square blocks with a (GPU-capable) torch matrix
product, every pair within the radius - exactly: block distances only pick candidates with a
float32 rounding margin, and every candidate's distance is then recomputed in float64 from the
difference of the two rows, like a tree search would. scikit-learn's DBSCAN accepts that graph
as a sparse precomputed neighbourhood (``metric="precomputed"``): entries stored are
neighbours when ``<= eps`` (explicit zeros - duplicate images - included), missing entries are
never neighbours, and DBSCAN itself adds the diagonal, so every point counts itself, exactly as
in the dense case (``min_samples`` includes the point). The graph is also what
:func:`adaptreid.pseudo.labels.sweep_eps` computes once for a whole eps sweep.

Labels are always relabelled to ``0..C-1`` in order of first appearance (the cluster of the
lowest-index image is 0, and so on), with -1 for outliers: deterministic and independent of
the algorithm's internal numbering.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from adaptreid.errors import ConfigError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "HDBSCAN_DENSE_LIMIT",
    "cluster",
    "kth_neighbor_distance",
    "radius_neighbors_graph",
    "relabel",
    "within_radius",
]

Method = Literal["dbscan", "kmeans", "hdbscan"]
Metric = Literal["euclidean", "cosine"]

#: Rows (and columns) of one distance block: 2048 x 2048 float32 = 16 MB.
DEFAULT_BLOCK_SIZE = 2048
#: Largest N for which HDBSCAN densifies a sparse precomputed distance: scikit-learn's HDBSCAN
#: works on a float64 N x N matrix, 8 N^2 bytes (1.35 GB at N = 13k, 3.2 GB at N = 20k).
HDBSCAN_DENSE_LIMIT = 20_000
#: Default cap on stored pairs of a radius graph (~1.6 GB): beyond it eps is almost surely far
#: too large (every image a neighbour of thousands), and a clear error beats running out of
#: memory.
DEFAULT_MAX_PAIRS = 100_000_000
_METHODS = ("dbscan", "kmeans", "hdbscan")
_METRICS = ("euclidean", "cosine")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def relabel(labels) -> np.ndarray:
    """Labels renumbered ``0..C-1`` in order of first appearance; negatives become -1."""
    labels = np.asarray(labels).reshape(-1)
    out = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels >= 0
    if valid.any():
        _, first, inverse = np.unique(labels[valid], return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        out[valid] = rank[inverse.reshape(-1)]
    return out


def _as_tensor(features) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        x = features.detach()
    else:
        arr = np.asarray(features)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("features are empty (no image to cluster)")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    return x


def _as_numpy(features) -> np.ndarray:
    x = _as_tensor(features)
    return x.cpu().numpy()


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")


def _sorted_csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR with each row ordered by (value, column) - the layout scikit-learn expects of a
    precomputed neighbourhood graph - keeping explicit zeros."""
    order = np.lexsort((cols, data, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((data[order], cols[order].astype(np.int32), indptr), shape=(n, n))


def within_radius(graph: sp.spmatrix, radius: float) -> sp.csr_matrix:
    """The entries of a sparse distance that are ``<= radius`` (explicit zeros kept).

    Row order is preserved, so a graph sorted by row values stays sorted.
    """
    graph = graph.tocsr()
    mask = graph.data <= radius
    if mask.all():
        return graph
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    indptr = np.zeros(graph.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[mask], minlength=graph.shape[0]), out=indptr[1:])
    return sp.csr_matrix((graph.data[mask], graph.indices[mask], indptr), shape=graph.shape)


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
    _check_metric(metric)
    if not radius >= 0:
        raise ConfigError(f"radius must be >= 0, got {radius!r}")
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size!r}")
    block_size = int(block_size)
    x = _as_tensor(features)
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
    return _sorted_csr(rows, cols, data, n)


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
    _check_metric(metric)
    from adaptreid.pseudo.kreciprocal import topk_neighbors

    x = _as_tensor(features).to(torch.float32)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    k = min(int(k), x.shape[0])
    sqd, _ = topk_neighbors(x, k)
    d2 = np.asarray(sqd[:, k - 1], dtype=np.float64)
    return d2 / 2.0 if metric == "cosine" else np.sqrt(d2)


# --------------------------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------------------------


def _positive_float(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return out


def _check_distance(distance, n: int | None) -> None:
    shape = getattr(distance, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ConfigError(f"distance must be a square (N, N) matrix, got shape {shape}")
    if n is not None and shape[0] != n:
        raise ConfigError(f"distance is {shape[0]} x {shape[0]} but there are {n} features")


def _dbscan(features, distance, eps, min_samples, metric, block_size, max_pairs) -> np.ndarray:
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


def _kmeans(features, k, seed, n_init) -> np.ndarray:
    from sklearn.cluster import KMeans

    x = _as_numpy(features)
    n = x.shape[0]
    if k is None:
        k = max(1, n // 15)  # MSPLR eq. 1: about 15 images per identity
    if int(k) != k or not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= N = {n}, got k={k!r}")
    km = KMeans(n_clusters=int(k), n_init=int(n_init), random_state=seed)
    return relabel(km.fit_predict(x))


def _hdbscan(
    features, distance, min_cluster_size, min_samples, metric, fill, dense_limit
) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    if distance is not None:
        n = distance.shape[0]
        if sp.issparse(distance) and n > dense_limit:
            if features is None:
                raise ConfigError(
                    f"HDBSCAN on a precomputed distance densifies it (8 N^2 bytes = "
                    f"{8 * n * n / 2**30:.1f} GiB for N = {n}), above the limit of N = "
                    f"{dense_limit}; pass features instead (HDBSCAN on euclidean features) or "
                    "raise hdbscan_dense_limit"
                )
            warnings.warn(
                f"HDBSCAN: N = {n} > hdbscan_dense_limit = {dense_limit}, so the precomputed "
                "distance is not densified; clustering the features (metric "
                f"{metric!r}) instead",
                UserWarning,
                stacklevel=3,
            )
            distance = None
    if distance is not None:
        if sp.issparse(distance):
            coo = distance.tocoo()
            dense = np.full(distance.shape, float(fill), dtype=np.float64)
            dense[coo.row, coo.col] = coo.data
        else:
            dense = np.array(distance, dtype=np.float64, copy=True)
        np.fill_diagonal(dense, 0.0)
        model = HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            metric="precomputed",
            copy=False,
        )
        return relabel(model.fit_predict(dense))
    x = _as_numpy(features).astype(np.float64)
    model = HDBSCAN(
        min_cluster_size=min_cluster_size, min_samples=min_samples, metric=metric, copy=False
    )
    return relabel(model.fit_predict(x))


def cluster(
    features=None,
    *,
    method: Method = "dbscan",
    distance=None,
    eps: float = 0.42,
    min_samples: int | None = None,
    k: int | None = None,
    min_cluster_size: int = 10,
    seed: int = 0,
    metric: Metric = "euclidean",
    n_init: int = 1,
    fill: float = 1.0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    hdbscan_dense_limit: int = HDBSCAN_DENSE_LIMIT,
) -> np.ndarray:
    """Cluster target images into pseudo identities; returns (N,) labels, -1 for outliers.

    Args:
        features: (N, D) features (numpy or torch). Needed for k-means; for DBSCAN / HDBSCAN
            when no ``distance`` is given.
        method: "dbscan" (MSPLR section 3.3.2), "kmeans" (section 3.3.1, eq. 1) or "hdbscan"
            (PAST section 2.2).
        distance: optional (N, N) precomputed distance, dense array or sparse matrix (e.g. the
            k-reciprocal Jaccard CSR, or a :func:`radius_neighbors_graph`). Sparse: missing
            entries mean "farther than eps" for DBSCAN and ``fill`` for HDBSCAN.
        eps: DBSCAN neighbourhood radius (paper: 0.35 for DukeMTMC, 0.42 for Market-1501 as
            target, on L2-normalised features; see :mod:`adaptreid.pseudo.camera_norm`).
        min_samples: DBSCAN / HDBSCAN core-point size, the point itself included. ``None``:
            4 for DBSCAN (MSPLR), ``min_cluster_size`` for HDBSCAN (scikit-learn's and PAST's
            default).
        k: k-means clusters; ``None``: ``max(1, N // 15)`` (MSPLR eq. 1).
        min_cluster_size: HDBSCAN's smallest cluster (PAST's S_min, 10 in the paper).
        seed: k-means random state.
        metric: distance between features: "euclidean" or "cosine" (DBSCAN and HDBSCAN).
        n_init: k-means restarts.
        fill: value of missing sparse entries when HDBSCAN densifies (1 for Jaccard).
        block_size: rows per block of the euclidean radius graph.
        max_pairs: cap on the radius graph (see :func:`radius_neighbors_graph`).
        hdbscan_dense_limit: largest N for which HDBSCAN densifies a sparse distance (float64
            N x N); above it HDBSCAN falls back to the features (with a warning) or fails.

    Returns:
        int64 labels relabelled ``0..C-1`` in order of first appearance, -1 = outlier
        (k-means never returns -1).
    """
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    _check_metric(metric)
    if features is None and distance is None:
        raise ConfigError("cluster() needs features or a precomputed distance")
    n = None if features is None else len(features)
    if distance is not None:
        _check_distance(distance, n)
    if min_samples is not None and (int(min_samples) != min_samples or min_samples < 1):
        raise ConfigError(f"min_samples must be a positive integer, got {min_samples!r}")

    if method == "dbscan":
        eps = _positive_float(eps, "DBSCAN eps")
        ms = 4 if min_samples is None else int(min_samples)
        return _dbscan(features, distance, eps, ms, metric, block_size, max_pairs)
    if method == "kmeans":
        if features is None:
            raise ConfigError("k-means needs features (it cannot use a precomputed distance)")
        return _kmeans(features, k, seed, n_init)
    if int(min_cluster_size) != min_cluster_size or min_cluster_size < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    return _hdbscan(
        features,
        distance,
        int(min_cluster_size),
        None if min_samples is None else int(min_samples),
        metric,
        fill,
        int(hdbscan_dense_limit),
    )
