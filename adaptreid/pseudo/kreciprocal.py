"""k-reciprocal encoding: exact top-k neighbours, sparse Jaccard distance and re-ranking.

Implements the k-reciprocal encoding of Zhong, Zheng, Cao and Li, "Re-ranking Person
Re-identification with k-reciprocal Encoding", CVPR 2017, exactly as its reference code computes
it, without ever holding an N x N matrix:

* original distance ``d(p, g) = ||x_p - x_g||^2`` over all (query + gallery) features, each row
  divided by its maximum (the reference divides the columns of the symmetric matrix by their
  maximum, then transposes; same thing);
* ``N(p, k)``: the first ``k + 1`` entries of the ranking of ``p`` (``p`` itself included);
* k-reciprocal set ``R(p, k1) = {g in N(p, k1) : p in N(g, k1)}`` (eq. 4);
* expansion ``R*(p, k1) = R(p, k1) U R(q, k1/2)`` for every ``q in R(p, k1)`` with
  ``|R(p, k1) n R(q, k1/2)| > 2/3 |R(q, k1/2)|`` (eq. 6), ``k1/2`` rounded half to even like
  ``np.around``;
* Gaussian-kernel encoding ``V[p, g] = exp(-d(p, g)) / sum_{g' in R*} exp(-d(p, g'))`` for
  ``g in R*(p, k1)`` and 0 elsewhere (eq. 7-8);
* local query expansion ``V[p] = mean of V[g] over the first k2 entries of p's ranking``
  (eq. 11, skipped when ``k2 == 1``);
* Jaccard distance ``d_J(p, g) = 1 - s / (2 - s)`` with ``s = sum_j min(V[p, j], V[g, j])``
  (eq. 9-10, the reference's ``1 - temp_min / (2 - temp_min)``);
* final distance ``(1 - lambda) d_J + lambda d`` (eq. 12).

How it stays O(N k) in memory and close to the matrix-product floor in time:

* the N x N squared distances are computed once, in square blocks of ``block_size`` rows, and
  only the upper block triangle is computed: each block updates the running top-k and the
  running row maximum of its rows *and* (transposed) of its columns, so the distance matrix is
  exactly symmetric and half the matrix product is saved;
* the top-k is exact with a total order: ties are broken by the smaller index, like a stable
  ``argsort`` (``torch.topk`` alone breaks ties arbitrarily; we ask for ``k + 1`` values, and
  rows where the k-th and (k+1)-th values tie fall back to a stable sort of that row);
* under torch.distributed (world size > 1) the blocks are dealt out to the ranks (block i to
  rank i mod world size), each rank keeps the running top-k of its blocks only, and the N x k
  key tables and row maxima are merged on every rank (an all-gather of N x k int64 keys and a
  max all-reduce): the O(N^2 d) part divides by the number of ranks and, the keys being
  unique, the merged table is exactly the single-process one. This makes
  :func:`k_reciprocal_encoding` and :func:`jaccard_distance` collectives by default in a
  distributed run (``distributed=None``): every rank must call them, with the same features;
  ``distributed=False`` computes everything in the calling process (e.g. on rank 0 alone).
  :func:`topk_neighbors` shards only with ``distributed=True`` (it also serves rank-0-only
  helpers). Re-ranking (:func:`k_reciprocal_rerank`) is not sharded;
* ``neighbors="approximate"`` (:mod:`adaptreid.pseudo.ann`) replaces the exact top-k by a
  search of inverted lists (each list's rows against its nearest lists' rows, dense products,
  exact distances), and the row maxima by lower bounds over a set of far rows: O(N^1.5 d)
  instead of O(N^2 d), at a recall that depends on the features; the rest is unchanged.
  :func:`jaccard_with_neighbors` also returns the neighbour table of the same search (PAST's
  ranking table reads it instead of searching again);
* k-reciprocal sets, the expansion test, the query expansion and the Jaccard sums are sparse
  matrix operations on the N x k neighbour table; the Jaccard sums ``sum min(.,.)`` are
  computed like the reference's inverted index, vectorised: one (p, g, min) triple per shared
  non-zero, summed per pair after a sort.

Conventions (documented differences from running the reference code):

* ``d(p, p)`` is exactly 0 and ``d`` is exactly symmetric (mathematically true; the reference's
  float32 ``addmm`` leaves rounding noise there). Exact duplicate rows therefore tie with
  ``p`` itself, and the lower index ranks first.
* A row whose maximum distance is 0 (all features identical) is left unnormalised (the
  reference divides by zero).
* The square case (training set, PAST eq. 1, DBSCAN pseudo-labels) is the reference
  algorithm with every feature both probe and gallery; its Jaccard distance is returned as a
  sparse CSR matrix whose missing entries are exactly 1 (pairs whose encodings share no
  neighbour). The diagonal is always stored (explicitly, even where it is 0).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .ann import approximate_knn, resolve_neighbors
from .cluster_base import row_chunks
from .settings import NeighborSettings
from .topk import (
    DEFAULT_BLOCK_SIZE,
    Backend,
    as_features,
    check_backend,
    check_k,
    decode_keys,
    neighbours,
    positive_int,
    sq_norms,
    use_sharding,
)

__all__ = [
    "jaccard_distance",
    "jaccard_with_neighbors",
    "k_reciprocal_encoding",
    "k_reciprocal_rerank",
    "sort_rows_by_distance",
    "sparse_distance_to_dense",
]

# Budget of (row, column, value) triples materialised at once in the Jaccard sums (~50 B each).
_TRIPLES_PER_CHUNK = 4_000_000


# --------------------------------------------------------------------------------------------
# sparse helpers
# --------------------------------------------------------------------------------------------


def _csr_from_sorted_keys(keys: np.ndarray, data: np.ndarray, n: int, m: int) -> sp.csr_matrix:
    """CSR from unique row-major keys ``row * m + col`` sorted ascending."""
    rows = keys // m
    indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    return sp.csr_matrix((data, (keys - rows * m).astype(np.int32), indptr), shape=(n, m))


def _csr_keys(a: sp.csr_matrix) -> np.ndarray:
    rows = np.repeat(np.arange(a.shape[0], dtype=np.int64), np.diff(a.indptr))
    return rows * a.shape[1] + a.indices


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray, default=0):
    """values[sorted_keys == key] for each key (default where absent); also the found mask."""
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    found = sorted_keys[pos] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
    out = np.where(found, values[pos] if len(values) else default, default)
    return out, found


def _reciprocal(nbr: np.ndarray) -> sp.csr_matrix:
    """R(p) = {g in N(p) : p in N(g)} for a neighbour table, as a 0/1 CSR (sorted indices)."""
    n, k = nbr.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = nbr.reshape(-1).astype(np.int64)
    fwd = np.sort(rows * n + cols)
    back = cols * n + rows  # (p, g) is reciprocal iff (g, p) is a forward pair too
    _, found = _lookup(fwd, fwd, back)
    keys = np.sort((rows * n + cols)[found])
    return _csr_from_sorted_keys(keys, np.ones(len(keys), np.float64), n, n)


def _half_k(k1: int) -> int:
    """``int(np.around(k1 / 2))``: round half to even, like the reference (and ``round``)."""
    return int(round(k1 / 2))


def _pair_dists(x: torch.Tensor, pi: np.ndarray, pj: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Squared distances of the given pairs (the same formula as the blocks)."""
    out = np.empty(len(pi), np.float32)
    xn = sq_norms(x)
    for s in range(0, len(pi), chunk):
        i = torch.from_numpy(pi[s : s + chunk]).to(x.device)
        j = torch.from_numpy(pj[s : s + chunk]).to(x.device)
        dot = torch.einsum("nd,nd->n", x[i], x[j])
        d = (xn[i] + xn[j] - 2.0 * dot).clamp_(min=0.0)
        d[i == j] = 0.0
        out[s : s + chunk] = d.cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# k-reciprocal encoding V
# --------------------------------------------------------------------------------------------


def _encoding(
    x: torch.Tensor, keys: torch.Tensor, rowmax: torch.Tensor, k1: int, k2: int
) -> sp.csr_matrix:
    """V (eq. 7-8, then the local query expansion of eq. 11) as an N x N CSR, float64."""
    n = x.shape[0]
    dist, nbr = decode_keys(keys)
    kmax = nbr.shape[1]
    r = _reciprocal(nbr[:, : min(k1 + 1, kmax)])  # R(p, k1)
    rh = _reciprocal(nbr[:, : min(_half_k(k1) + 1, kmax)])  # R(q, k1/2)

    # Expansion test for every candidate q in R(p): |R(p) n R(q, k1/2)| > 2/3 |R(q, k1/2)|.
    overlap = (r @ rh.T).tocsr()
    overlap.sort_indices()
    cand_keys = _csr_keys(r)
    cnt, _ = _lookup(_csr_keys(overlap), overlap.data, cand_keys)
    cand_p = cand_keys // n
    cand_q = cand_keys - cand_p * n
    size = np.diff(rh.indptr)[cand_q]
    keep = cnt > (2.0 / 3.0) * size
    sel = sp.csr_matrix((np.ones(int(keep.sum())), (cand_p[keep], cand_q[keep])), shape=(n, n))
    rstar = (r + sel @ rh).tocsr()  # union of R(p) and the kept R(q, k1/2)
    rstar.sum_duplicates()
    rstar.sort_indices()

    # Gaussian weights of the row-normalised original distance, looked up in the top-k table
    # (either direction: d is symmetric) or recomputed for the few pairs outside it.
    star_keys = _csr_keys(rstar)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(rstar.indptr))
    cols = rstar.indices.astype(np.int64)
    tab_rows = np.repeat(np.arange(n, dtype=np.int64), kmax)
    tab_cols = nbr.reshape(-1)
    tab_keys = np.concatenate([tab_rows * n + tab_cols, tab_cols * n + tab_rows])
    tab_vals = np.concatenate([dist.reshape(-1), dist.reshape(-1)])
    tab_keys, first = np.unique(tab_keys, return_index=True)
    tab_vals = tab_vals[first]
    d, found = _lookup(tab_keys, tab_vals, star_keys, default=0.0)
    d = d.astype(np.float64)
    if not found.all():
        miss = ~found
        d[miss] = _pair_dists(x, rows[miss], cols[miss])
    mx = rowmax.cpu().numpy().astype(np.float64)
    mx[mx == 0] = 1.0
    w = np.exp(-(d / mx[rows]))
    total = np.bincount(rows, weights=w, minlength=n)
    v = sp.csr_matrix((w / total[rows], rstar.indices, rstar.indptr), shape=(n, n))

    k2 = min(k2, n)
    if k2 != 1:  # local query expansion: V[p] <- mean of V over p's first k2 neighbours
        qe = sp.csr_matrix(
            (np.full(n * k2, 1.0 / k2), nbr[:, :k2].reshape(-1), np.arange(0, n * k2 + 1, k2)),
            shape=(n, n),
        )
        v = (qe @ v).tocsr()
        v.sum_duplicates()
        v.sort_indices()
    return v


# --------------------------------------------------------------------------------------------
# Jaccard sums: s(p, g) = sum_j min(V[p, j], V[g, j]) via an inverted index (CSC of V)
# --------------------------------------------------------------------------------------------


class _Inverted:
    """Column-wise view of the gallery rows of V: for column j, the rows g with V[g, j] != 0."""

    def __init__(self, vg: sp.csr_matrix):
        csc = vg.tocsc()
        csc.sort_indices()
        self.indptr = csc.indptr.astype(np.int64)
        self.rows = csc.indices.astype(np.int64)
        self.data = csc.data
        self.n_rows = vg.shape[0]
        # keys col * n_rows + row are sorted: used to start each column at a given row
        self.keys = (
            np.repeat(np.arange(csc.shape[1], dtype=np.int64), np.diff(self.indptr)) * self.n_rows
            + self.rows
        )

    def starts(self, cols: np.ndarray, min_rows: np.ndarray | None) -> np.ndarray:
        if min_rows is None:
            return self.indptr[cols]
        return np.searchsorted(self.keys, cols * self.n_rows + min_rows)


def _row_chunks(row_cost: np.ndarray, budget: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Split rows into consecutive chunks of at most ``budget`` triples and ``max_rows`` rows."""
    return row_chunks(np.concatenate([[0], np.cumsum(row_cost)]), budget, max_rows)


def _triples(vq: sp.csr_matrix, inv: _Inverted, r0: int, r1: int, upper_offset: int | None):
    """(local row, gallery row, min) for every column shared by query rows r0:r1 and V's rows.

    ``upper_offset`` set: only gallery rows >= query row + upper_offset (square case, j >= i).
    """
    lo, hi = vq.indptr[r0], vq.indptr[r1]
    prow = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(vq.indptr[r0 : r1 + 1]))
    pcol = vq.indices[lo:hi].astype(np.int64)
    pval = vq.data[lo:hi]
    start = inv.starts(pcol, None if upper_offset is None else prow + r0 + upper_offset)
    cnt = inv.indptr[pcol + 1] - start
    total = int(cnt.sum())
    ent = np.repeat(np.arange(len(cnt)), cnt)
    pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt - start, cnt)
    return prow[ent], inv.rows[pos], np.minimum(pval[ent], inv.data[pos])


def _cost(vq: sp.csr_matrix, inv: _Inverted) -> np.ndarray:
    per_entry = np.diff(inv.indptr)[vq.indices]
    rows = np.repeat(np.arange(vq.shape[0]), np.diff(vq.indptr))
    return np.bincount(rows, weights=per_entry, minlength=vq.shape[0]).astype(np.int64)


def _jaccard_square(v: sp.csr_matrix, verbose: bool) -> sp.csr_matrix:
    """Sparse Jaccard distance among all rows of V; missing entries are 1, diagonal stored."""
    n = v.shape[0]
    inv = _Inverted(v)
    keys_up, sums_up = [], []
    chunks = list(_row_chunks(_cost(v, inv) // 2 + 1, _TRIPLES_PER_CHUNK, n))
    for r0, r1 in tqdm(chunks, desc="k-reciprocal: Jaccard", disable=not verbose, leave=False):
        pr, g, mn = _triples(v, inv, r0, r1, upper_offset=0)
        key = (pr + r0) * n + g
        order = np.argsort(key)
        key = key[order]
        if len(key) == 0:
            continue
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        keys_up.append(key[first])
        sums_up.append(np.add.reduceat(mn[order], first))
    key = np.concatenate(keys_up) if keys_up else np.zeros(0, np.int64)
    s = np.concatenate(sums_up) if sums_up else np.zeros(0)
    del keys_up, sums_up
    p = key // n
    off = p != key - p * n
    on_diag = p[~off]
    # S = upper part (with the diagonal) + transposed strict upper part, in the similarity
    # domain (s > 0, so the sparse addition drops nothing); both parts are canonical CSR.
    upper = _csr_from_sorted_keys(key, s, n, n)
    lower = _csr_from_sorted_keys(key[off], s[off], n, n).T.tocsr()
    del key, s, p, off
    sim = (upper + lower).tocsr()
    del upper, lower
    sim.sort_indices()
    jac = sp.csr_matrix((_jaccard_from_sums(sim.data), sim.indices, sim.indptr), shape=(n, n))
    del sim
    # The diagonal is always stored: 0 normally, 1 where V[p] is empty (p shares nothing).
    missing = np.setdiff1d(np.arange(n, dtype=np.int64), on_diag, assume_unique=True)
    if len(missing):
        keys = np.concatenate([_csr_keys(jac), missing * (n + 1)])
        data = np.concatenate([jac.data, np.ones(len(missing), np.float32)])
        order = np.argsort(keys)
        jac = _csr_from_sorted_keys(keys[order], data[order], n, n)
    return jac


def _jaccard_from_sums(s: np.ndarray) -> np.ndarray:
    """Eq. 10 as the reference writes it: 1 - s / (2 - s), clipped to [0, 1] (rounding)."""
    return np.clip(1.0 - s / (2.0 - s), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _neighbour_keys(
    x: torch.Tensor,
    k: int,
    neighbors: NeighborSettings | str | None,
    block_size: int,
    backend: str,
    verbose: bool,
    distributed: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k nearest rows (packed keys) and row maxima: exact (blocked, sharded under
    torch.distributed as ``distributed`` says) or approximate (:mod:`.ann`, in this process),
    as ``neighbors`` resolves for N."""
    st, mode = resolve_neighbors(neighbors, x.shape[0])
    if mode == "approximate":
        keys, rowmax, _ = approximate_knn(x, k, st, verbose=verbose)
        return keys, rowmax
    sharded = use_sharding(distributed, backend)
    return neighbours(x, None, k, block_size, backend, verbose, sharded=sharded)


def _encoding_and_table(features, k1, k2, num_neighbors, neighbors, **search):
    """V (eq. 7-8, 11) and the first ``num_neighbors`` columns of the euclidean ranking it
    was built on (one neighbour search for both: the larger k, then slices). ``search``:
    ``block_size``, ``backend``, ``verbose``, ``distributed`` of the exact search."""
    k1, k2 = check_k(k1, k2)
    block_size = positive_int(search.get("block_size", DEFAULT_BLOCK_SIZE), "block_size")
    num_neighbors = int(num_neighbors)
    if num_neighbors < 0:
        raise ValueError(f"num_neighbors must be >= 0, got {num_neighbors!r}")
    backend = check_backend(search.get("backend", "auto"))
    x = as_features(features, "features")
    need = max(k1 + 1, k2)  # N(p, k1) has k1 + 1 entries (p included); eq. 11 reads k2
    keys, rowmax = _neighbour_keys(
        x,
        max(need, num_neighbors),
        neighbors,
        block_size,
        backend,
        search.get("verbose", False),
        search.get("distributed"),
    )
    # V from exactly the columns it needs: a wider table would look more pair distances up
    # instead of recomputing them (same values up to float rounding, but not bit for bit)
    v = _encoding(x, keys[:, :need], rowmax, k1, k2)
    table = decode_keys(keys[:, :num_neighbors])[1] if num_neighbors else None
    return v, table


def k_reciprocal_encoding(
    features,
    k1: int = 20,
    k2: int = 6,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    backend: Backend = "auto",
    verbose: bool = False,
    distributed: bool | None = None,
    neighbors: NeighborSettings | str | None = None,
) -> sp.csr_matrix:
    """The k-reciprocal feature V of every sample (Zhong et al. 2017, eq. 7-8 and 11).

    Returns an N x N CSR matrix (float64) whose row p holds the Gaussian weights of the
    expanded k-reciprocal set R*(p, k1), locally query-expanded over k2 neighbours (k2 = 1: no
    expansion). Rows sum to 1 (except rows with an empty set, which are 0). ``distributed``
    and ``neighbors``: as in :func:`jaccard_distance`.
    """
    v, _ = _encoding_and_table(
        features,
        k1,
        k2,
        0,
        neighbors,
        block_size=block_size,
        backend=backend,
        verbose=verbose,
        distributed=distributed,
    )
    return v


def jaccard_with_neighbors(
    features,
    k1: int = 20,
    k2: int = 6,
    *,
    num_neighbors: int,
    neighbors: NeighborSettings | str | None = None,
    verbose: bool = False,
    distributed: bool | None = None,
) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """:func:`jaccard_distance` and the euclidean neighbour table its encoding was built on.

    One neighbour search serves both: it keeps ``max(k1 + 1, k2, num_neighbors)`` neighbours
    per row, the encoding reads its first ``max(k1 + 1, k2)`` columns (the Jaccard distance is
    the same as :func:`jaccard_distance`'s), the table is the first ``num_neighbors``. PAST's
    ranking table (:func:`adaptreid.pseudo.ranking.ranked_neighbors`, ``2 eta + 1`` columns)
    takes it instead of a second search over all the features.

    Returns:
        ``(jaccard, table)``: the CSR of :func:`jaccard_distance`, and an
        ``(N, num_neighbors)`` int64 array whose row p lists the samples nearest to p by
        squared euclidean distance, ordered by (distance, index), p itself included (first,
        unless an exact duplicate has a smaller index); None when ``num_neighbors`` is 0.
        With approximate ``neighbors`` the table is the approximate one. ``neighbors``,
        ``verbose``, ``distributed``: as in :func:`jaccard_distance` (the exact search with
        its default blocks and backend).
    """
    v, table = _encoding_and_table(
        features, k1, k2, num_neighbors, neighbors, verbose=verbose, distributed=distributed
    )
    return _jaccard_square(v, verbose), table


def jaccard_distance(
    features,
    k1: int = 20,
    k2: int = 6,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    backend: Backend = "auto",
    verbose: bool = False,
    distributed: bool | None = None,
    neighbors: NeighborSettings | str | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance among N features, as a sparse matrix (Zhong et al. 2017).

    The Jaccard distance of eq. 10 with V of eq. 7-8 and 11, every feature being both probe
    and gallery (the square case: PAST eq. 1, DBSCAN pseudo-labels). With exact neighbours,
    equal to the dense reference algorithm (see the module docstring for the conventions).

    Args:
        features: (N, d) features (not normalised here: L2-normalise them first if wanted).
        k1: size of the k-reciprocal neighbourhood (paper default 20).
        k2: local query expansion size (paper default 6; 1 disables it).
        block_size: rows per distance block (peak memory ~ 30 block_size^2 bytes + O(N k)).
        backend: "auto"/"torch" (exact) or "faiss" (kNN by faiss, see ``topk_neighbors``), for
            exact neighbours.
        verbose: show progress bars.
        distributed: shard the exact top-k (the O(N^2 d) part) across torch.distributed
            ranks: each rank computes every world-size-th block of the distance matrix and the
            N x k tables are merged on all ranks (exactly the single-process result, same tie
            order); each rank then computes the O(N k) rest, so every rank returns the same
            matrix. ``None`` (default): shard when torch.distributed is initialised with world
            size > 1, and then **every rank must call this function**, with the same
            features and arguments (it is a collective, like ``all_reduce``; a call on rank 0
            alone waits forever). ``False``: compute it all in this process. Approximate
            neighbours are never sharded (each calling process computes them).
        neighbors: how the k1 + 1 nearest neighbours N(p, k1) and the row maxima are found
            (:class:`~adaptreid.pseudo.settings.NeighborSettings` or its mode): ``"exact"``,
            ``"approximate"`` (inverted lists searched with exact distances,
            :mod:`adaptreid.pseudo.ann`; needs faiss) or ``"auto"`` (approximate from
            ``NeighborSettings.auto_min_n`` samples up when faiss is installed, exact
            otherwise). None: the default, exact.

    Returns:
        (N, N) ``scipy.sparse.csr_matrix``, float32, sorted indices. Stored: every pair whose
        encodings share a neighbour (distance < 1) and the whole diagonal (explicitly, also
        where it is 0). Missing entries are exactly 1. Feed it to
        ``sklearn.cluster.DBSCAN(metric="precomputed")`` with ``eps < 1``: missing entries
        are then "farther than eps", as they must be. Use ``sort_rows_by_distance`` for
        per-row rankings (PAST's ranking score matrix, eq. 2).
    """
    v = k_reciprocal_encoding(
        features,
        k1,
        k2,
        block_size=block_size,
        backend=backend,
        verbose=verbose,
        distributed=distributed,
        neighbors=neighbors,
    )
    return _jaccard_square(v, verbose)


def k_reciprocal_rerank(
    query,
    gallery,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    backend: Backend = "auto",
    verbose: bool = False,
) -> np.ndarray:
    """k-reciprocal re-ranking of a query x gallery distance (Zhong et al. 2017, eq. 12).

    ``final = (1 - lambda) * d_J + lambda * d`` on the query x gallery block, where ``d`` is
    the squared euclidean distance divided by its row maximum over all query + gallery
    features, and ``d_J`` the Jaccard distance of the encodings computed over query + gallery
    together (queries are each other's neighbours too, like the reference).

    Returns:
        (q, g) float32 array (the only dense output; nothing (q + g)^2 is held).
    """
    k1, k2 = check_k(k1, k2, lambda_value)
    block_size = positive_int(block_size, "block_size")
    backend = check_backend(backend)
    xq = as_features(query, "query")
    xg = as_features(gallery, "gallery", device=xq.device)
    if xq.shape[1] != xg.shape[1]:
        raise ValueError(f"query has {xq.shape[1]} dims but gallery has {xg.shape[1]}")
    q, g = xq.shape[0], xg.shape[0]
    x = torch.cat([xq, xg])
    del xq, xg
    out = torch.empty((q, g), dtype=torch.float32)  # raw distances first, final in place
    keys, rowmax = neighbours(x, None, max(k1 + 1, k2), block_size, backend, verbose, qg=(q, out))
    v = _encoding(x, keys, rowmax, k1, k2)
    del keys
    out_np = out.numpy()
    mx = rowmax.cpu().numpy()[:q].astype(np.float64)
    mx[mx == 0] = 1.0

    vq = v[:q]
    inv = _Inverted(v[q:])
    max_rows = max(1, (8 << 20) // g)  # dense float64 block of at most 64 MB
    chunks = list(_row_chunks(_cost(vq, inv) + 1, _TRIPLES_PER_CHUNK, max_rows))
    bar = tqdm(chunks, desc="k-reciprocal: re-rank", disable=not verbose, leave=False)
    for r0, r1 in bar:
        pr, gj, mn = _triples(vq, inv, r0, r1, upper_offset=None)
        s = np.bincount(pr * g + gj, weights=mn, minlength=(r1 - r0) * g).reshape(r1 - r0, g)
        orig = out_np[r0:r1].astype(np.float64) / mx[r0:r1, None]
        jac = 1.0 - s / (2.0 - s)
        out_np[r0:r1] = (1.0 - lambda_value) * jac + lambda_value * orig
    return out_np


def sort_rows_by_distance(dist: sp.csr_matrix) -> sp.csr_matrix:
    """The same sparse distance with each row's entries ordered by (distance, column).

    Per-row rankings of the stored neighbours (PAST's ranking score matrix, eq. 2:
    row p lists its neighbours from the most to the least similar), and the layout scikit-learn
    expects of precomputed sparse neighbourhood graphs (``sort_graph_by_row_values``).
    """
    dist = dist.tocsr()
    rows = np.repeat(np.arange(dist.shape[0]), np.diff(dist.indptr))
    order = np.lexsort((dist.indices, dist.data, rows))
    out = sp.csr_matrix(
        (dist.data[order], dist.indices[order], dist.indptr.copy()), shape=dist.shape
    )
    out.has_sorted_indices = False
    return out


def sparse_distance_to_dense(dist: sp.spmatrix, fill: float = 1.0) -> np.ndarray:
    """Dense copy of a sparse distance whose missing entries mean ``fill`` (1 for Jaccard).

    For small N only (tests, plots): this is the N x N matrix the sparse form avoids.
    """
    coo = dist.tocoo()
    out = np.full(dist.shape, fill, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out
