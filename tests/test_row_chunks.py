"""The row-chunked sparse helpers (issue 27, the million-image step's memory): the same
results a chunk of rows at a time as in one piece, and memory that no longer grows with
arrays as long as all the stored entries."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import adaptreid.pseudo.cluster_base as cb
from adaptreid.pseudo.cluster_base import row_chunks, within_radius
from adaptreid.pseudo.hdbscan import hdbscan_sparse, sparse_core_distances
from adaptreid.pseudo.ranking import ranked_neighbors


def symmetric_graph(n, per_row, seed, empty_rows=()):
    """A symmetric sparse distance in [0, 1) with a stored diagonal on some rows, some empty
    rows and many tied values."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), per_row)
    cols = rng.integers(0, n, n * per_row)
    vals = rng.integers(0, 20, n * per_row) / 20.0
    keep = ~np.isin(rows, empty_rows) & ~np.isin(cols, empty_rows)
    g = sp.coo_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    g.sum_duplicates()
    g.data = np.minimum(g.data, 0.95)
    g = g.maximum(g.T).tocsr()
    g.setdiag(np.where(np.arange(n) % 3 == 0, 0.5, 0.0))
    g.eliminate_zeros()
    g.sort_indices()
    return g


@pytest.mark.parametrize("budget", [1, 5, 37, 10**9])
def test_row_chunks_cover_every_row_once_within_the_budget(budget):
    g = symmetric_graph(300, 4, 0, empty_rows=(0, 1, 150, 299))
    chunks = list(row_chunks(g.indptr, budget))
    assert chunks[0][0] == 0 and chunks[-1][1] == 300
    for (a0, a1), (b0, _) in zip(chunks, chunks[1:]):
        assert a1 == b0 and a1 > a0
    for r0, r1 in chunks:
        entries = g.indptr[r1] - g.indptr[r0]
        assert entries <= budget or r1 == r0 + 1


@pytest.mark.parametrize("seed", range(3))
def test_chunked_helpers_equal_one_piece(monkeypatch, seed):
    g = symmetric_graph(400, 6, seed, empty_rows=(7, 200))
    whole = {
        "radius": within_radius(g, 0.4),
        "ranked": ranked_neighbors(g, 9),
        "core": sparse_core_distances(g, 4),
        "hdbscan": hdbscan_sparse(g, min_cluster_size=4),
    }
    assert len(list(row_chunks(g.indptr))) == 1
    monkeypatch.setattr(cb, "CHUNK_ENTRIES", 13)  # many chunks, rows split across none
    assert len(list(row_chunks(g.indptr))) > 100
    got = within_radius(g, 0.4)
    assert (got != whole["radius"]).nnz == 0
    np.testing.assert_array_equal(got.indptr, whole["radius"].indptr)
    np.testing.assert_array_equal(got.indices, whole["radius"].indices)
    np.testing.assert_array_equal(ranked_neighbors(g, 9), whole["ranked"])
    np.testing.assert_array_equal(sparse_core_distances(g, 4), whole["core"])
    np.testing.assert_array_equal(hdbscan_sparse(g, min_cluster_size=4), whole["hdbscan"])
    assert whole["hdbscan"].max() >= 1  # more than one cluster: a real case


def test_ranked_neighbors_memory_does_not_grow_with_all_the_entries(monkeypatch):
    n, num = 5_000, 10
    g = symmetric_graph(n, 200, 1).astype(np.float32)  # ~400 entries a row
    monkeypatch.setattr(cb, "CHUNK_ENTRIES", 1 << 15)
    tracemalloc.start()
    try:
        out = ranked_neighbors(g, num)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (n, num) and (out >= 0).all()
    # the output and per-row counts, plus a chunk's arrays; building int64 row, column and
    # float64 value arrays for every entry at once takes over 24 bytes an entry
    assert peak < 8 * n * (num + 4) + 200 * (1 << 15), (peak, g.nnz)
    assert 8 * g.nnz > 2 * peak  # the bound is well below one 8-byte array of all entries
