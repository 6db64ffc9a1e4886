"""k-reciprocal engine against a dense, loop-based textbook implementation.

The reference below follows Zhong et al., CVPR 2017 ("Re-ranking Person Re-identification with
k-reciprocal Encoding") the way its reference code does, row by row with plain loops, on a dense
(q + g) x (q + g) matrix, in float64. Ties are broken by a stable argsort (smaller index first).

Test features are small integers (optionally halved) around cluster centres, with exact duplicate
rows: every distance is then computed exactly in float32 and float64 alike, so the rankings
(including the many ties) must agree exactly, and the distances to 1e-5.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from adaptreid.pseudo import topk as tk
from adaptreid.pseudo.kreciprocal import (
    jaccard_distance,
    k_reciprocal_encoding,
    k_reciprocal_rerank,
    sort_rows_by_distance,
    sparse_distance_to_dense,
)
from adaptreid.pseudo.topk import topk_neighbors

# --------------------------------------------------------------------------------------------
# textbook reference (dense, loops)
# --------------------------------------------------------------------------------------------


def _k_reciprocal(initial_rank, i, k):
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    rows = np.where(backward == i)[0]
    return forward[rows]


def textbook(query, gallery, k1, k2, lambda_value):
    """Dense re-ranking; returns (final q x g, jaccard (q+g) x (q+g) rows of the queries,
    V after query expansion)."""
    feat = np.concatenate([query, gallery]).astype(np.float64)
    query_num = len(query)
    all_num = len(feat)
    sq = (feat**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * feat @ feat.T
    dist = np.maximum(dist, 0.0)
    np.fill_diagonal(dist, 0.0)
    original_dist = np.transpose(dist / np.max(dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2))
    for i in range(all_num):
        k_reciprocal_index = _k_reciprocal(initial_rank, i, k1)
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            cand_index = _k_reciprocal(initial_rank, candidate, half)
            common = np.intersect1d(cand_index, k_reciprocal_index)
            if len(common) > 2 / 3 * len(cand_index):
                expansion = np.append(expansion, cand_index)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        if len(expansion):
            V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(all_num)]
    jaccard = np.zeros((query_num, all_num))
    for i in range(query_num):
        temp_min = np.zeros(all_num)
        nonzero = np.where(V[i, :] != 0)[0]
        for j in nonzero:
            images = inv_index[j]
            temp_min[images] += np.minimum(V[i, j], V[images, j])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist[:query_num] * lambda_value
    return final[:, query_num:], jaccard, V


def clustered(n, d, seed, n_dup=8, scale=1.0, n_clusters=None):
    """Integer features around cluster centres, with per-'camera' offsets and exact duplicates."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(2, n // 10)
    centres = rng.integers(-6, 7, size=(n_clusters, d))
    cams = rng.integers(-1, 2, size=(3, d))
    x = centres[rng.integers(0, n_clusters, n)] + cams[rng.integers(0, 3, n)]
    x = x + rng.integers(-1, 2, size=(n, d))
    dup_src = rng.integers(0, n, n_dup)
    dup_dst = rng.choice(n, n_dup, replace=False)
    x[dup_dst] = x[dup_src]
    return (x * scale).astype(np.float32)


def brute_topk(x, y, k):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    d = (x64**2).sum(1)[:, None] + (y64**2).sum(1)[None, :] - 2 * x64 @ y64.T
    if x is y:
        np.fill_diagonal(d, 0.0)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


PARAMS = [(20, 6, 0.3), (10, 1, 0.5), (7, 3, 0.0), (5, 2, 1.0), (3, 4, 0.7)]


# --------------------------------------------------------------------------------------------
# top-k
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [7, 32, 4096])
def test_topk_equals_brute_force_with_ties(block_size):
    x = clustered(130, 10, seed=1, n_dup=15)
    ref_d, ref_i = brute_topk(x, x, 25)
    dist, idx = topk_neighbors(x, 25, block_size=block_size)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)
    # many ties really are exercised
    assert (np.diff(ref_d, axis=1) == 0).sum() > 200


@pytest.mark.parametrize("block_size", [5, 64])
def test_topk_query_gallery_with_ties(block_size):
    g = clustered(90, 8, seed=2, n_dup=10)
    q = np.concatenate([g[:10], clustered(20, 8, seed=3)])  # queries duplicated in the gallery
    ref_d, ref_i = brute_topk(q, g, 30)
    dist, idx = topk_neighbors(q, 30, y=g, block_size=block_size)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)


def test_topk_k_larger_than_candidates_and_tensor_input():
    x = torch.from_numpy(clustered(12, 4, seed=4, n_dup=3))
    dist, idx = topk_neighbors(x, 50, block_size=5)
    ref_d, ref_i = brute_topk(x.numpy(), x.numpy(), 12)
    assert idx.shape == (12, 12)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-6)


def test_block_topk_resolves_boundary_ties_by_index():
    # every value equal: topk alone would return an arbitrary subset
    d = torch.zeros(3, 40)
    keys = tk._block_topk(d, 5, offset=100)
    _, idx = tk.decode_keys(keys)
    np.testing.assert_array_equal(idx, np.tile(np.arange(100, 105), (3, 1)))


# --------------------------------------------------------------------------------------------
# square case: sparse Jaccard distance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k1,k2,_lam", PARAMS)
def test_jaccard_square_equals_textbook(k1, k2, _lam):
    x = clustered(110, 12, seed=10 + k1, n_dup=12, scale=0.5)
    _, ref, ref_v = textbook(x, x[:0], k1, k2, 0.0)
    jac = jaccard_distance(x, k1, k2, block_size=16)
    assert sp.isspmatrix_csr(jac) and jac.dtype == np.float32 and jac.has_sorted_indices
    dense = sparse_distance_to_dense(jac)
    assert np.abs(dense - ref).max() <= 1e-5
    # nothing stored where the distance is 1, except the (always stored) diagonal
    coo = jac.tocoo()
    off = coo.row != coo.col
    assert (coo.data[off] < 1.0).all()
    assert (jac.diagonal() == np.diag(ref).astype(np.float32)).all() or np.allclose(
        jac.diagonal(), np.diag(ref), atol=1e-5
    )
    assert len(coo.data) - off.sum() == len(x)
    stored = np.zeros(ref.shape, bool)
    stored[coo.row, coo.col] = True
    assert (ref[~stored] == 1.0).all()
    assert (ref[stored & ~np.eye(len(x), dtype=bool)] < 1.0).all()
    # the encoding itself
    v = k_reciprocal_encoding(x, k1, k2, block_size=16)
    assert np.abs(v.toarray() - ref_v).max() <= 1e-6


def test_blocked_equals_single_block():
    x = clustered(150, 16, seed=20, n_dup=20)
    one = jaccard_distance(x, 20, 6, block_size=1024)
    for bs in (1, 13, 50):
        many = jaccard_distance(x, 20, 6, block_size=bs)
        np.testing.assert_array_equal(many.indptr, one.indptr)
        np.testing.assert_array_equal(many.indices, one.indices)
        np.testing.assert_allclose(many.data, one.data, atol=1e-6)


def test_many_duplicates_empty_encoding_keeps_diagonal_one():
    # 30 copies of one point: with k1 = 5 the later copies are in nobody's top-6, so their
    # k-reciprocal set is empty; without query expansion their row shares nothing, d(p,p) = 1.
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((30, 4)), rng.integers(-3, 4, (40, 4))]).astype(np.float32)
    _, ref, _ = textbook(x, x[:0], 5, 1, 0.0)
    jac = jaccard_distance(x, 5, 1, block_size=8)
    assert np.abs(sparse_distance_to_dense(jac) - ref).max() <= 1e-5
    assert (jac.diagonal()[10:30] == 1.0).all()
    assert np.allclose(jac.diagonal()[:6], 0.0, atol=1e-6)


def test_more_neighbours_than_samples():
    x = clustered(9, 5, seed=5, n_dup=2)
    _, ref, _ = textbook(x, x[:0], 20, 6, 0.0)
    jac = jaccard_distance(x, 20, 6)
    assert np.abs(sparse_distance_to_dense(jac) - ref).max() <= 1e-5


def test_real_valued_features_without_ties():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(8, 16))
    x = (centres[rng.integers(0, 8, 100)] + 0.3 * rng.normal(size=(100, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    _, ref, _ = textbook(x, x[:0], 20, 6, 0.0)
    jac = jaccard_distance(x, 20, 6, block_size=32)
    assert np.abs(sparse_distance_to_dense(jac) - ref).max() <= 1e-5


@pytest.mark.parametrize("k1,k2", [(20, 6), (10, 3)])
def test_dbscan_sparse_equals_dense(k1, k2):
    x = clustered(140, 10, seed=30 + k1, n_dup=10, n_clusters=9)
    _, ref, _ = textbook(x, x[:0], k1, k2, 0.0)
    ref = np.maximum(ref, 0.0)  # the diagonal is 1 - s/(2 - s) with s = 1 +- rounding
    jac = jaccard_distance(x, k1, k2, block_size=32)
    values = np.unique(ref)
    for target in (0.3, 0.5, 0.6, 0.75):
        # eps halfway between two distances, so 1e-5 differences cannot flip a neighbourhood
        i = np.searchsorted(values, target)
        eps = (values[i - 1] + values[i]) / 2
        assert values[i] - values[i - 1] > 1e-4
        dense_labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
        sparse_labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(
            sort_rows_by_distance(jac)
        )
        np.testing.assert_array_equal(sparse_labels, dense_labels)
    assert len(set(dense_labels) - {-1}) >= 2  # a meaningful clustering


def test_sort_rows_by_distance():
    x = clustered(60, 6, seed=8, n_dup=6)
    jac = jaccard_distance(x, 10, 3)
    srt = sort_rows_by_distance(jac)
    np.testing.assert_array_equal(sparse_distance_to_dense(srt), sparse_distance_to_dense(jac))
    for i in range(60):
        a, b = srt.indptr[i], srt.indptr[i + 1]
        order = np.lexsort((srt.indices[a:b], srt.data[a:b]))
        np.testing.assert_array_equal(order, np.arange(b - a))


# --------------------------------------------------------------------------------------------
# query x gallery re-ranking
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k1,k2,lam", PARAMS)
def test_rerank_equals_textbook(k1, k2, lam):
    g = clustered(100, 10, seed=40 + k1, n_dup=10, scale=0.5)
    q = np.concatenate([g[5:12], clustered(25, 10, seed=50 + k1, scale=0.5)])
    ref, _, _ = textbook(q, g, k1, k2, lam)
    out = k_reciprocal_rerank(q, g, k1, k2, lam, block_size=9)
    assert out.shape == (len(q), len(g)) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-5


def test_rerank_block_sizes_agree():
    g = clustered(120, 12, seed=60, n_dup=10)
    q = clustered(40, 12, seed=61, n_dup=5)
    full = k_reciprocal_rerank(q, g)  # the defaults of `adaptreid evaluate --rerank`
    for bs in (4, 33, 200):
        out = k_reciprocal_rerank(q, g, block_size=bs)
        assert np.abs(out - full).max() <= 1e-6
    ref, _, _ = textbook(q, g, 20, 6, 0.3)
    assert np.abs(full - ref).max() <= 1e-5


# --------------------------------------------------------------------------------------------
# errors and the optional faiss backend
# --------------------------------------------------------------------------------------------


def test_input_errors():
    x = clustered(20, 4, seed=0)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=0)
    with pytest.raises(ValueError, match="k2"):
        jaccard_distance(x, k2=0)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_rerank(x, x, k1=2.5)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(x, x, lambda_value=1.5)
    with pytest.raises(ValueError, match="2-D"):
        jaccard_distance(x[0])
    with pytest.raises(ValueError, match="NaN"):
        jaccard_distance(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="dims"):
        k_reciprocal_rerank(x, x[:, :3])
    with pytest.raises(ValueError, match="backend"):
        topk_neighbors(x, 3, backend="annoy")
    with pytest.raises(ValueError, match="block_size"):
        topk_neighbors(x, 3, block_size=0)


def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 32)).astype(np.float32)  # no ties: faiss order is then exact
    d_t, i_t = topk_neighbors(x, 15)
    d_f, i_f = topk_neighbors(x, 15, backend="faiss")
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(d_f, d_t, atol=1e-4)
    j_t = jaccard_distance(x, 10, 3)
    j_f = jaccard_distance(x, 10, 3, backend="faiss")
    assert np.abs(sparse_distance_to_dense(j_t) - sparse_distance_to_dense(j_f)).max() < 1e-4
    q = rng.normal(size=(30, 32)).astype(np.float32)
    r_t = k_reciprocal_rerank(q, x, 10, 3)
    r_f = k_reciprocal_rerank(q, x, 10, 3, backend="faiss")
    assert np.abs(r_t - r_f).max() < 1e-4
