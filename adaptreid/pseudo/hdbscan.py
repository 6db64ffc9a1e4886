"""HDBSCAN (PAST, section 2.2; ``min_cluster_size = S_min``) on a sparse
precomputed distance in memory linear in its stored entries (:func:`hdbscan_sparse`: the
minimum spanning tree of the mutual-reachability graph grown as scikit-learn's dense Prim's
algorithm grows it, then scikit-learn's own tree functions), or scikit-learn's HDBSCAN on a
dense distance or on features."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .cluster_base import (
    as_numpy,
    check_distance,
    chunk_rows,
    finite_float,
    relabel,
    row_chunks,
)

__all__ = [
    "hdbscan_labels",
    "hdbscan_sparse",
    "sparse_core_distances",
    "sparse_mutual_reachability_mst",
]

# --------------------------------------------------------------------------------------------
# HDBSCAN on a sparse precomputed distance (no N x N array)
# --------------------------------------------------------------------------------------------


def _sklearn_hdbscan_internals():
    """scikit-learn's HDBSCAN tree functions (``sklearn.cluster._hdbscan``, scikit-learn >= 1.3).

    The sparse path builds the minimum spanning tree itself and hands it to these, so that the
    single-linkage tree, the condensed tree, the stabilities and the excess-of-mass selection
    are scikit-learn's own code.
    """
    try:
        from sklearn.cluster._hdbscan._linkage import MST_edge_dtype, make_single_linkage
        from sklearn.cluster._hdbscan._tree import tree_to_labels
    except ImportError as err:  # pragma: no cover - depends on the installed scikit-learn
        import sklearn

        raise ImportError(
            "HDBSCAN on a sparse distance uses scikit-learn's internal HDBSCAN tree functions "
            "(sklearn.cluster._hdbscan._linkage.make_single_linkage, "
            f"sklearn.cluster._hdbscan._tree.tree_to_labels), not importable in scikit-learn "
            f"{sklearn.__version__}: install scikit-learn >= 1.3, or pass "
            "hdbscan_impl='dense' (densifies the distance: 8 N^2 bytes)"
        ) from err
    return MST_edge_dtype, make_single_linkage, tree_to_labels


def _offdiag_csr(distance, fill: float) -> tuple[sp.csr_matrix, int]:
    """The off-diagonal entries of a square sparse distance as canonical CSR, checked: finite,
    ``0 <= value <= fill``, exactly symmetric. float32 input stays float32 when ``fill`` is a
    float32 number (every comparison is then exact in either type; half the memory)."""
    d = distance.tocsr()
    if not d.has_canonical_format:
        d = d.copy()
        d.sum_duplicates()
    n = d.shape[0]
    dtype = np.float32 if d.dtype == np.float32 and float(np.float32(fill)) == fill else np.float64
    # the diagonal entries dropped a chunk of rows at a time (no array of all the entries'
    # row indices); at most one a row in canonical format, so the new row starts are the old
    # ones less the entries dropped from the rows before
    keep = np.empty(d.nnz, dtype=bool)
    for r0, r1 in row_chunks(d.indptr):
        s, e = d.indptr[r0], d.indptr[r1]
        keep[s:e] = d.indices[s:e] != chunk_rows(d.indptr, r0, r1)
    dropped = np.flatnonzero(~keep)
    before = np.zeros(n + 1, dtype=np.int64)
    if len(dropped):
        rows = np.searchsorted(d.indptr, dropped, side="right") - 1
        np.cumsum(np.bincount(rows, minlength=n), out=before[1:])
    indptr = d.indptr.astype(np.int64) - before
    del dropped, before
    data = d.data[keep].astype(dtype, copy=False)
    indices = d.indices[keep]
    del keep
    if len(data):
        if not np.isfinite(data).all():
            raise ValueError("the sparse distance holds NaN or infinite values")
        lo, hi = float(data.min()), float(data.max())
        if lo < 0:
            raise ValueError(f"the sparse distance holds a negative value ({lo})")
        if hi > fill:
            raise ValueError(
                f"the sparse distance stores a value {hi} > fill = {fill}: missing entries "
                "(which mean fill) must be the farthest; pass a larger fill"
            )
    d = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    d.has_sorted_indices = True  # canonical input, rows filtered in order
    t = d.T.tocsr()
    t.sort_indices()
    same = np.array_equal(d.indptr, t.indptr) and np.array_equal(d.indices, t.indices)
    same = same and np.array_equal(d.data, t.data)
    del t
    if not same:
        raise ValueError(
            "HDBSCAN needs a symmetric distance: the sparse matrix differs from its transpose"
        )
    return d, n


def sparse_core_distances(distance, min_samples: int, *, fill: float = 1.0) -> np.ndarray:
    """HDBSCAN core distances of a sparse precomputed distance whose missing entries mean
    ``fill``: the ``min_samples``-th smallest value of each densified row, the point itself
    (distance 0) counted first, as scikit-learn counts it.

    Equal to ``np.partition(dense, min_samples - 1, axis=1)[:, min_samples - 1]`` on the dense
    matrix with a zero diagonal, without forming it.
    """
    d, _ = _offdiag_csr(distance, float(fill))
    return _core_from_offdiag(d, int(min_samples), float(fill))


def _core_from_offdiag(d: sp.csr_matrix, k: int, fill: float) -> np.ndarray:
    n = d.shape[0]
    if k <= 1:
        return np.zeros(n, dtype=np.float64)
    core = np.full(n, fill, dtype=np.float64)
    counts = np.diff(d.indptr)
    # rows with fewer than k - 1 stored entries keep fill (their k-th smallest is missing);
    # for the others, the (k-1)-th smallest stored value: np.partition of rows padded with
    # +inf, rows of similar length together (linear time, <= ~8 MB of padding at once)
    rows = np.flatnonzero(counts >= k - 1)
    rows = rows[np.argsort(counts[rows], kind="stable")]
    budget = 1 << 20
    start = 0
    while start < len(rows):
        # rows are in ascending length: the chunk ends before the rows longer than `width`
        probe = min(len(rows) - 1, start + budget // max(1, int(counts[rows[start]])))
        width = int(counts[rows[probe]])
        stop = min(len(rows), start + max(1, budget // max(1, width)))
        r = rows[start:stop]
        c = counts[r]
        width = int(c[-1])
        pad = np.full((len(r), width), np.inf)
        local = np.repeat(np.arange(len(r)), c)
        pos = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        pad[local, pos] = d.data[np.repeat(d.indptr[r], c) + pos]
        core[r] = np.partition(pad, k - 2, axis=1)[:, k - 2]
        start = stop
    return core


def sparse_mutual_reachability_mst(distance, min_samples: int, *, fill: float = 1.0):
    """The minimum spanning tree of the mutual-reachability graph of a sparse distance, as
    scikit-learn's dense HDBSCAN path builds it, without an N x N array.

    Mutual reachability ``max(core_i, core_j, d_ij)``, with ``d_ij = fill`` where the sparse
    matrix stores nothing and the core distances of :func:`sparse_core_distances`. Every pair
    of points is therefore joined (missing pairs by edges of weight ``fill``), which is what
    the densified matrix does. The tree is grown by Prim's algorithm exactly as
    ``sklearn.cluster._hdbscan._linkage.mst_from_mutual_reachability`` grows it on the dense
    matrix: start at point 0, add the outside point of smallest reachability to the tree
    (ties: the smallest index), record the edge as ``(previous point, new point, reachability)``.
    Since all stored distances are ``<= fill``, every outside point is within ``fill`` of the
    tree, so only stored entries need a priority queue; the points that have none are taken in
    index order at reachability ``fill``. The output is the same array, edge for edge and in
    the same order, so scikit-learn's single-linkage tree (which sorts it, ties included) and
    everything after it are identical too.

    Returns:
        ``(n - 1,)`` structured array with scikit-learn's ``MST_edge_dtype``
        (``current_node``, ``next_node``, ``distance``).
    """
    import heapq

    mst_dtype, _, _ = _sklearn_hdbscan_internals()
    fill = float(fill)
    d, n = _offdiag_csr(distance, fill)
    k = int(min_samples)
    if not 1 <= k <= n:
        raise ConfigError(f"min_samples must be in [1, N = {n}], got {min_samples!r}")
    core = _core_from_offdiag(d, k, fill)
    # mutual reachability of every stored pair, once (the dense loop's max(core, core, d))
    core_t = core.astype(d.dtype)  # exact: core values are stored values or fill
    mr = np.maximum(d.data, np.repeat(core_t, np.diff(d.indptr)))
    d.data = mr
    np.maximum(mr, core_t[d.indices], out=mr)
    del core_t
    indptr = d.indptr.tolist()
    indices = d.indices
    del d

    best = np.full(n, np.inf)  # smallest reachability to the tree through a stored entry
    visited = np.zeros(n, dtype=bool)
    heap: list[tuple[float, int]] = []
    out_cur = np.empty(n - 1, dtype=np.int64)
    out_next = np.empty(n - 1, dtype=np.int64)
    out_dist = np.empty(n - 1, dtype=np.float64)
    push, pop = heapq.heappush, heapq.heappop
    low = 0  # the smallest index outside the tree
    current = 0
    for step in range(n - 1):
        visited[current] = True
        best[current] = -np.inf  # never improved again, and stale in the heap
        s, e = indptr[current], indptr[current + 1]
        if e > s:
            nb = indices[s:e]
            w = mr[s:e]
            better = w < best[nb]
            if better.any():
                nb, w = nb[better], w[better]
                best[nb] = w
                for val, j in zip(w.tolist(), nb.tolist()):
                    push(heap, (val, j))
        while heap and heap[0][0] != best[heap[0][1]]:
            pop(heap)
        while visited[low]:
            low += 1
        if heap and (heap[0][0] < fill or (heap[0][0] == fill and heap[0][1] < low)):
            val, new = heap[0]
        else:
            val, new = fill, low
        out_cur[step] = current
        out_next[step] = new
        out_dist[step] = val
        current = new
    return np.rec.fromarrays([out_cur, out_next, out_dist], dtype=mst_dtype)


def hdbscan_sparse(
    distance,
    *,
    min_cluster_size: int = 10,
    min_samples: int | None = None,
    fill: float = 1.0,
    cluster_selection_method: Literal["eom", "leaf"] = "eom",
    allow_single_cluster: bool = False,
    cluster_selection_epsilon: float = 0.0,
) -> np.ndarray:
    """HDBSCAN on a sparse precomputed distance (missing entries mean ``fill``), in O(stored
    entries) memory: the labels scikit-learn's ``HDBSCAN(metric="precomputed")`` gives on the
    densified matrix (missing entries ``fill``, zero diagonal), relabelled by first appearance.

    The minimum spanning tree of the mutual-reachability graph is
    :func:`sparse_mutual_reachability_mst` (the same edges, in the same order, as scikit-learn's
    dense Prim's algorithm); the single-linkage tree, condensed tree, cluster stabilities and
    the excess-of-mass (or leaf) selection are scikit-learn's own functions
    (``sklearn.cluster._hdbscan``), so ties resolve the same way and the labels are equal.

    Args:
        distance: (N, N) symmetric sparse distance, stored values in ``[0, fill]`` (the
            k-reciprocal Jaccard CSR of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`
            with ``fill = 1``). The diagonal is taken as 0 whatever is stored there.
        min_cluster_size: smallest cluster (PAST's S_min).
        min_samples: core-point size, the point itself included; ``None``: ``min_cluster_size``
            (scikit-learn's default).
        fill: the distance of the pairs the matrix does not store.
        cluster_selection_method, allow_single_cluster, cluster_selection_epsilon: as in
            ``sklearn.cluster.HDBSCAN``.

    Returns:
        (N,) int64 labels ``0..C-1`` in order of first appearance, -1 = noise.
    """
    if not sp.issparse(distance):
        raise ConfigError("hdbscan_sparse needs a scipy.sparse distance matrix")
    check_distance(distance, None)
    n = distance.shape[0]
    if n < 2:
        raise ConfigError("HDBSCAN needs at least 2 samples")
    mcs = int(min_cluster_size)
    if mcs != min_cluster_size or mcs < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    ms = mcs if min_samples is None else int(min_samples)
    if ms > n:
        raise ConfigError(f"min_samples ({ms}) must be at most the number of samples ({n})")
    fill = finite_float(fill, "fill")
    _, make_single_linkage, tree_to_labels = _sklearn_hdbscan_internals()
    mst = sparse_mutual_reachability_mst(distance, ms, fill=fill)
    # scikit-learn's _process_mst: sort the edges by weight (the same unstable argsort of the
    # same array, so the same order of tied edges), then the single-linkage tree
    mst = mst[np.argsort(mst["distance"])]
    slt = make_single_linkage(mst)
    labels, _ = tree_to_labels(
        slt,
        mcs,
        cluster_selection_method,
        bool(allow_single_cluster),
        float(cluster_selection_epsilon),
        None,
    )
    return relabel(labels)


def hdbscan_labels(
    features, distance, min_cluster_size, min_samples, metric, fill, impl, dense_limit
) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    if distance is not None and sp.issparse(distance) and impl == "sparse":
        return hdbscan_sparse(
            distance, min_cluster_size=min_cluster_size, min_samples=min_samples, fill=fill
        )
    if distance is not None:
        n = distance.shape[0]
        if sp.issparse(distance):
            if n > dense_limit:
                raise ConfigError(
                    f"hdbscan_impl='dense' densifies the sparse distance (8 N^2 bytes = "
                    f"{8 * n * n / 2**30:.1f} GiB for N = {n}), above hdbscan_dense_limit = "
                    f"{dense_limit}; use hdbscan_impl='sparse' (the same labels, O(N k) "
                    "memory) or raise hdbscan_dense_limit"
                )
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
    x = as_numpy(features).astype(np.float64)
    model = HDBSCAN(
        min_cluster_size=min_cluster_size, min_samples=min_samples, metric=metric, copy=False
    )
    return relabel(model.fit_predict(x))
