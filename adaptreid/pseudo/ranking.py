"""PAST's ranking score matrix (section 2.2, eq. 2) as a neighbour table for RTL.

Eq. 2 sorts every row ``D_J(x_i)`` of the k-reciprocal Jaccard distance (eq. 1) ascending:
``D_R(x_i) = [d_J(x_i, x~_1), ..., d_J(x_i, x~_N)]`` where ``x~_j`` is the j-th most similar
sample. The ranking-based triplet loss (eq. 4) only needs *which* sample sits at each rank
``1..2 eta``, so :func:`ranked_neighbors` returns that table, ``(N, num)`` dataset indices,
from the sparse Jaccard matrix of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`
without ever forming a dense row.

Conventions:

* rank 1 is the nearest *other* sample: sample ``i`` itself is removed from row ``i``
  (whatever its stored distance; duplicates of ``i`` stay, they are other samples);
* stored entries are ordered by (distance, column index): a total order, like a stable
  argsort of the dense row;
* **ranks beyond the stored entries.** The sparse matrix stores only pairs whose k-reciprocal
  encodings overlap (``d_J < 1``); every other sample is at distance exactly 1, tied. When a
  row has fewer than ``num`` stored neighbours (an isolated image; on Market-1501 with
  k1 = 20 a row stores about 150 on average, so this is rare at ``num = 2 eta = 40``), the
  missing ranks are filled by the samples closest in the *original* euclidean distance
  among those not yet listed (the order k-reciprocal re-ranking itself falls back to: its
  final distance is ``(1 - lambda) d_J + lambda d``), read from ``neighbors`` (the
  euclidean neighbour table of the Jaccard distance's own neighbour search,
  :func:`adaptreid.pseudo.kreciprocal.jaccard_with_neighbors`: no second search) or
  searched among ``features``, and otherwise marked ``-1`` (unavailable;
  :func:`adaptreid.losses.sample_rtl_pairs` refuses them). A stored entry equal to 1.0
  (float rounding of a tiny overlap) is treated like a missing one, so that all samples at
  distance 1 are ordered the same way.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from adaptreid.errors import ConfigError
from adaptreid.pseudo.cluster_base import chunk_rows, row_chunks

__all__ = ["ranked_neighbors"]


def ranked_neighbors(jaccard, num: int, *, features=None, neighbors=None) -> np.ndarray:
    """The first ``num`` columns of the ranking score matrix D_R (PAST eq. 2), as indices.

    Args:
        jaccard: ``(N, N)`` sparse k-reciprocal Jaccard distance whose missing entries mean
            1 (:func:`adaptreid.pseudo.kreciprocal.jaccard_distance`), or a dense array.
        num: ranks to return (``2 * eta`` for RTL).
        features: optional ``(N, D)`` features (those the Jaccard distance was computed
            from) to fill ranks past the stored entries by euclidean distance (an exact
            search of those rows' ``num + 1`` nearest samples among all); without them or
            ``neighbors`` such ranks are ``-1``.
        neighbors: optional ``(N, >= num + 1)`` table of each sample's nearest samples by
            euclidean distance, the sample itself included, as
            :func:`~adaptreid.pseudo.kreciprocal.jaccard_with_neighbors` returns it with
            ``num_neighbors = num + 1``: fills those ranks without a search (``features``
            is then not read). The same table as the search's, so the same ranks.

    Returns:
        ``(N, num)`` int64: ``out[i, r - 1]`` is the sample at rank ``r`` of row ``i`` (rank
        1 = nearest other sample), ``-1`` where unavailable.

    Raises:
        ConfigError: ``num`` < 1, or ``num`` > N - 1 (not that many other samples).
    """
    if isinstance(num, bool) or int(num) != num or num < 1:
        raise ConfigError(f"ranked_neighbors: num must be a positive integer, got {num!r}")
    num = int(num)
    if not sp.issparse(jaccard):
        jaccard = sp.csr_matrix(np.asarray(jaccard, dtype=np.float64))
    dist = jaccard.tocsr()
    n = dist.shape[0]
    if dist.shape != (n, n):
        raise ValueError(f"jaccard must be square, got shape {dist.shape}")
    if num > n - 1:
        raise ConfigError(
            f"ranked_neighbors: {num} ranks asked but only {n - 1} other samples exist "
            f"(RTL needs 2 * eta <= N - 1: use a smaller eta)"
        )
    # row by row in chunks of stored entries (row_chunks): the same order within each row
    out = np.full((n, num), -1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for r0, r1 in row_chunks(dist.indptr):
        s, e = dist.indptr[r0], dist.indptr[r1]
        rows = chunk_rows(dist.indptr, r0, r1)
        cols = dist.indices[s:e].astype(np.int64)
        vals = np.asarray(dist.data[s:e], dtype=np.float64)
        keep = (cols != rows) & (vals < 1.0)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        order = np.lexsort((cols, vals, rows))  # by row, then distance, then index
        rows, cols = rows[order], cols[order]
        local = np.bincount(rows - r0, minlength=r1 - r0)
        counts[r0:r1] = local
        starts = np.cumsum(local) - local
        pos = np.arange(len(rows), dtype=np.int64) - starts[rows - r0]
        take = pos < num
        out[rows[take], pos[take]] = cols[take]

    if neighbors is not None:
        neighbors = np.asarray(neighbors)
        if neighbors.ndim != 2 or neighbors.shape[0] != n or neighbors.shape[1] < num + 1:
            raise ValueError(
                f"neighbors must be an (N, >= num + 1) = ({n}, >= {num + 1}) table (the row "
                f"itself included), got shape {neighbors.shape}: compute it with "
                f"num_neighbors={num + 1}"
            )
    short = np.flatnonzero(counts < num)
    if len(short) and (features is not None or neighbors is not None):
        _fill_by_euclidean(out, short, np.minimum(counts[short], num), features, neighbors)
    return out


def _fill_by_euclidean(
    out: np.ndarray, rows: np.ndarray, filled: np.ndarray, features, table=None
) -> None:
    """Complete rows ``rows`` of ``out`` (first ``filled`` entries valid) with the nearest
    samples by euclidean distance that are neither listed yet nor the row itself: from
    ``table`` (N x >= num + 1) when given, else searched among ``features``."""
    from adaptreid.pseudo.topk import topk_neighbors

    num = out.shape[1]
    n = out.shape[0]
    # the num + 1 nearest (self included) always hold num - filled samples not listed yet
    if table is not None:
        nbr = table[rows, : num + 1]
    else:
        if len(features) != n:
            raise ValueError(f"{len(features)} features for a {n} x {n} distance")
        x = np.asarray(features, dtype=np.float32) if not hasattr(features, "detach") else features
        _, nbr = topk_neighbors(x[rows], min(num + 1, n), y=x)
    for r, (i, f) in enumerate(zip(rows.tolist(), filled.tolist())):
        listed = set(out[i, :f].tolist())
        listed.add(i)
        extra = [j for j in nbr[r].tolist() if j not in listed][: num - f]
        out[i, f : f + len(extra)] = extra
