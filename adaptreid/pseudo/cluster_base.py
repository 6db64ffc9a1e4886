"""What the clustering algorithms share (:mod:`.dbscan`, :mod:`.kmeans`, :mod:`.hdbscan`,
behind :func:`adaptreid.pseudo.clustering.cluster`): input checks, :func:`relabel` (labels
``0..C-1`` in order of first appearance, -1 for outliers), sparse-graph helpers and the
shared constants."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ConfigError
from .settings import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_PAIRS, HDBSCAN_DENSE_LIMIT

__all__ = [
    "CHUNK_ENTRIES",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_PAIRS",
    "HDBSCAN_DENSE_LIMIT",
    "chunk_rows",
    "relabel",
    "row_chunks",
    "within_radius",
]

# stored entries handled at once by the row-chunked sparse helpers (row_chunks): a few
# arrays of this length at a time, instead of arrays as long as all the stored entries
# (155 million at N = 1,000,000 in BENCHMARKS' million-image step)
CHUNK_ENTRIES = 1 << 22


_METRICS = ("euclidean", "cosine")
HDBSCAN_IMPLS = ("sparse", "dense")
KMEANS_IMPLS = ("torch", "sklearn")


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


def as_tensor(features) -> torch.Tensor:
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


def as_numpy(features) -> np.ndarray:
    x = as_tensor(features)
    return x.cpu().numpy()


def check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")


def sorted_csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR with each row ordered by (value, column) - the layout scikit-learn expects of a
    precomputed neighbourhood graph - keeping explicit zeros."""
    order = np.lexsort((cols, data, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((data[order], cols[order].astype(np.int32), indptr), shape=(n, n))


def row_chunks(indptr: np.ndarray, budget: int | None = None, max_rows: int | None = None):
    """Consecutive row ranges ``(r0, r1)`` of a CSR matrix covering every row, each holding
    at most ``budget`` (default :data:`CHUNK_ENTRIES`) stored entries, or a single longer
    row, and at most ``max_rows`` rows. ``indptr`` may be any cumulative per-row cost that
    starts at 0."""
    budget = CHUNK_ENTRIES if budget is None else int(budget)
    n = len(indptr) - 1
    max_rows = n if max_rows is None else int(max_rows)
    r0 = 0
    while r0 < n:
        # the last row whose end stays within the budget, at least one row
        r1 = int(np.searchsorted(indptr, indptr[r0] + budget, side="right")) - 1
        r1 = min(n, max(r0 + 1, r1), r0 + max_rows)
        yield r0, r1
        r0 = r1


def chunk_rows(indptr: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """The row index of each stored entry of rows ``r0:r1`` (int64)."""
    return np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))


def within_radius(graph: sp.spmatrix, radius: float) -> sp.csr_matrix:
    """The entries of a sparse distance that are ``<= radius`` (explicit zeros kept).

    Row order is preserved, so a graph sorted by row values stays sorted. Rows are filtered
    a chunk at a time (:func:`row_chunks`): no array as long as all the stored entries
    beyond the mask and the result.
    """
    graph = graph.tocsr()
    mask = graph.data <= radius
    if mask.all():
        return graph
    n = graph.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for r0, r1 in row_chunks(graph.indptr):
        s, e = graph.indptr[r0], graph.indptr[r1]
        counts[r0:r1] = np.bincount(
            chunk_rows(graph.indptr, r0, r1)[mask[s:e]] - r0, minlength=r1 - r0
        )
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((graph.data[mask], graph.indices[mask], indptr), shape=graph.shape)


def finite_float(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


def positive_float(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return out


def check_distance(distance, n: int | None) -> None:
    shape = getattr(distance, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ConfigError(f"distance must be a square (N, N) matrix, got shape {shape}")
    if n is not None and shape[0] != n:
        raise ConfigError(f"distance is {shape[0]} x {shape[0]} but there are {n} features")
