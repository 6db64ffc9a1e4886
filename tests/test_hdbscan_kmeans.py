"""HDBSCAN on a sparse precomputed distance (no N x N array) against scikit-learn's HDBSCAN on
the densified matrix, and the torch k-means against scikit-learn's KMeans (issue 16)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import HDBSCAN, KMeans

from adaptreid.errors import ConfigError
from adaptreid.pseudo.cluster_base import relabel
from adaptreid.pseudo.clustering import cluster
from adaptreid.pseudo.hdbscan import (
    hdbscan_sparse,
    sparse_core_distances,
    sparse_mutual_reachability_mst,
)
from adaptreid.pseudo.kmeans import kmeans
from adaptreid.pseudo.kreciprocal import jaccard_distance

# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def reid_like(n, d=48, seed=0, per_identity=12, cams=4):
    """L2-normalised identity centres + camera offsets + noise (like benchmarks/)."""
    rng = np.random.default_rng(seed)
    ids = max(1, n // per_identity)
    centres = rng.standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    offs = rng.standard_normal((cams, d)) * 0.4 / np.sqrt(d)
    x = centres[rng.integers(0, ids, n)] + offs[rng.integers(0, cams, n)]
    x += rng.standard_normal((n, d)) * (0.8 / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tied_graph(n, seed, fill=1.0, levels=4, deg=6, isolated=0.1):
    """A symmetric sparse distance with few distinct values (many exact ties), rows with
    fewer entries than min_samples, isolated points and several components."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, max(1, n // 25), n)
    rows, cols = [], []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        for i in members:
            if rng.random() < isolated:
                continue
            nb = rng.choice(members, size=min(deg, len(members)), replace=False)
            rows += [i] * len(nb)
            cols += list(nb)
    rows, cols = np.asarray(rows, int), np.asarray(cols, int)
    vals = rng.integers(1, levels + 1, len(rows)) * (fill / (levels + 1))
    a = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    a.sum_duplicates()
    a.data = np.minimum(a.data, fill * levels / (levels + 1))
    a = a.maximum(a.T).tocsr()
    # a few stored pairs exactly at fill (they must behave like missing ones)
    a.data[rng.random(a.nnz) < 0.02] = fill
    a = a.maximum(a.T).tocsr()
    return a


def dense_of(dist, fill):
    coo = dist.tocoo()
    out = np.full(dist.shape, float(fill))
    out[coo.row, coo.col] = coo.data
    np.fill_diagonal(out, 0.0)
    return out


def sklearn_dense(dist, fill, mcs, ms, **kw):
    model = HDBSCAN(min_cluster_size=mcs, min_samples=ms, metric="precomputed", copy=True, **kw)
    return relabel(model.fit_predict(dense_of(dist, fill)))


def sklearn_dense_mst(dist, fill, ms):
    from sklearn.cluster._hdbscan._linkage import mst_from_mutual_reachability
    from sklearn.cluster._hdbscan._reachability import mutual_reachability_graph

    return mst_from_mutual_reachability(mutual_reachability_graph(dense_of(dist, fill), ms))


# --------------------------------------------------------------------------------------------
# HDBSCAN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [300, 1500])
def test_sparse_hdbscan_equals_dense_on_jaccard(seed, n):
    jac = jaccard_distance(reid_like(n, seed=seed), 20, 6)
    n_clusters = []
    for mcs, ms in [(5, None), (10, None), (5, 3), (10, 4), (2, 1), (4, 12)]:
        got = hdbscan_sparse(jac, min_cluster_size=mcs, min_samples=ms)
        want = sklearn_dense(jac, 1.0, mcs, ms)
        np.testing.assert_array_equal(got, want, err_msg=f"mcs={mcs} ms={ms}")
        n_clusters.append(got.max() + 1)
    assert min(n_clusters) >= 5  # non-trivial clusterings


@pytest.mark.parametrize("seed", range(6))
def test_sparse_mst_is_sklearns_dense_mst_edge_for_edge_with_ties(seed):
    fill = [1.0, 2.5][seed % 2]
    g = tied_graph(400, seed, fill=fill)
    for ms in (1, 2, 5, 9):
        want = sklearn_dense_mst(g, fill, ms)
        got = sparse_mutual_reachability_mst(g, ms, fill=fill)
        assert got.dtype == want.dtype
        for field in ("current_node", "next_node", "distance"):
            np.testing.assert_array_equal(got[field], want[field], err_msg=f"{field} ms={ms}")
        assert len(np.unique(want["distance"])) < 10  # the case is full of ties
    for mcs, ms in [(5, None), (3, 2), (8, 5), (2, 1)]:
        for method in ("eom", "leaf"):
            got = hdbscan_sparse(
                g, min_cluster_size=mcs, min_samples=ms, fill=fill, cluster_selection_method=method
            )
            want = sklearn_dense(g, fill, mcs, ms, cluster_selection_method=method)
            np.testing.assert_array_equal(got, want, err_msg=f"mcs={mcs} ms={ms} {method}")


def test_core_distances_equal_dense_partition():
    g = tied_graph(300, 7)
    g = g.tolil()
    g[3, 3] = 0.7  # a stored diagonal value counts as 0, like the dense path's fill_diagonal
    g = g.tocsr()
    dense = dense_of(g, 1.0)
    for k in (1, 2, 3, 6, 20):
        want = np.partition(dense, k - 1, axis=1)[:, k - 1]
        np.testing.assert_array_equal(sparse_core_distances(g, k), want)


@pytest.mark.slow
def test_sparse_hdbscan_equals_dense_at_n_5000():
    jac = jaccard_distance(reid_like(5000, d=64, seed=3), 20, 6)
    for mcs, ms in [(10, None), (5, 4)]:
        np.testing.assert_array_equal(
            hdbscan_sparse(jac, min_cluster_size=mcs, min_samples=ms),
            sklearn_dense(jac, 1.0, mcs, ms),
        )


def test_sparse_hdbscan_memory_is_linear_in_the_stored_entries():
    n = 20_000  # the dense path would hold float64 N x N matrices: 3.2 GB each
    g = tied_graph(n, 1).astype(np.float32)
    tracemalloc.start()
    try:
        labels = hdbscan_sparse(g, min_cluster_size=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert labels.shape == (n,) and labels.max() > 10
    assert peak < 48 * g.nnz + 400 * n, (peak, g.nnz)  # tens of bytes per entry, not N^2


def test_cluster_hdbscan_uses_the_sparse_path_at_every_n_and_dense_is_explicit():
    x = reid_like(600, seed=5)
    jac = jaccard_distance(x, 20, 6)
    want = sklearn_dense(jac, 1.0, 10, None)
    # no fallback to the features, whatever hdbscan_dense_limit says
    np.testing.assert_array_equal(cluster(x, method="hdbscan", distance=jac), want)
    np.testing.assert_array_equal(
        cluster(x, method="hdbscan", distance=jac, hdbscan_dense_limit=10), want
    )
    np.testing.assert_array_equal(cluster(method="hdbscan", distance=jac), want)
    np.testing.assert_array_equal(
        cluster(method="hdbscan", distance=jac, hdbscan_impl="dense"), want
    )
    with pytest.raises(ConfigError, match="hdbscan_dense_limit"):
        cluster(method="hdbscan", distance=jac, hdbscan_impl="dense", hdbscan_dense_limit=100)
    with pytest.raises(ConfigError, match="hdbscan_impl"):
        cluster(method="hdbscan", distance=jac, hdbscan_impl="fast")


def test_sparse_hdbscan_rejects_what_the_dense_path_would_not_mean():
    g = tied_graph(100, 0)
    asym = g.tolil()
    asym[0, 1], asym[1, 0] = 0.2, 0.3
    with pytest.raises(ValueError, match="symmetric"):
        hdbscan_sparse(asym.tocsr(), min_cluster_size=5)
    with pytest.raises(ValueError, match="fill"):
        hdbscan_sparse(g * 3.0, min_cluster_size=5)  # stored values above fill = 1
    with pytest.raises(ConfigError, match="sparse"):
        hdbscan_sparse(g.toarray(), min_cluster_size=5)
    with pytest.raises(ConfigError, match="min_samples"):
        hdbscan_sparse(g, min_cluster_size=5, min_samples=101)
    with pytest.raises(ConfigError, match="min_cluster_size"):
        hdbscan_sparse(g, min_cluster_size=1)


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


def _inertia(x, labels, centers):
    x = x.astype(np.float64)
    c = np.asarray(centers, np.float64)
    return float(((x - c[labels]) ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_inertia_within_one_percent_of_sklearn(seed):
    x = reid_like(3000, d=64, seed=seed, per_identity=15)
    k = len(x) // 15
    res = kmeans(x, k, seed=seed)
    ref = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    assert res.inertia <= 1.01 * ref.inertia_, (res.inertia, ref.inertia_)
    # the reported inertia is that of the returned labels and centres
    assert res.inertia == pytest.approx(_inertia(x, res.labels, res.centers), rel=1e-4)


def test_kmeans_labels_are_a_partition_into_nearest_centres():
    x = reid_like(1200, d=32, seed=3)
    k = 80
    res = kmeans(x, k, seed=0)
    assert res.labels.shape == (len(x),) and res.labels.dtype == np.int64
    assert res.labels.min() >= 0 and res.labels.max() < k
    assert len(np.unique(res.labels)) == k  # no empty cluster
    c = res.centers.numpy().astype(np.float64)
    d2 = ((x.astype(np.float64)[:, None, :] - c[None]) ** 2).sum(-1)
    own = d2[np.arange(len(x)), res.labels]
    assert (own <= d2.min(1) + 1e-5).all()  # every point sits with its nearest centre
    # every centre is the mean of its points
    for j in range(0, k, 7):
        np.testing.assert_allclose(c[j], x[res.labels == j].mean(0), atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed():
    x = torch.from_numpy(reid_like(900, d=32, seed=4))
    a = kmeans(x, 60, seed=11)
    b = kmeans(x, 60, seed=11)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert torch.equal(a.centers, b.centers) and a.inertia == b.inertia
    c = kmeans(x, 60, seed=12)
    assert not np.array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(cluster(x, method="kmeans", k=60, seed=11), relabel(a.labels))


def test_kmeans_edge_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    res = kmeans(x, 40, seed=0)  # k = N: every point its own cluster
    assert len(np.unique(res.labels)) == 40 and res.inertia == pytest.approx(0.0, abs=1e-6)
    x[20:] = x[:20]  # every point twice: at most 20 distinct clusters (as scikit-learn)
    res = kmeans(x, 40, seed=0)
    assert res.labels.max() < 40 and res.inertia == pytest.approx(0.0, abs=1e-6)
    one = kmeans(x, 1)
    assert (one.labels == 0).all()
    np.testing.assert_allclose(one.centers[0].numpy(), x.mean(0), atol=1e-6)
    with pytest.raises(ConfigError, match="k-means"):
        kmeans(x, 41)
    with pytest.raises(ConfigError, match="k-means"):
        cluster(x, method="kmeans", k=0)
    with pytest.raises(ConfigError, match="kmeans_impl"):
        cluster(x, method="kmeans", k=3, kmeans_impl="faiss")


def test_cluster_kmeans_sklearn_impl_is_available():
    x = reid_like(300, d=16, seed=6, per_identity=15)
    a = cluster(x, method="kmeans", kmeans_impl="sklearn", seed=0)
    b = relabel(KMeans(n_clusters=20, n_init=1, random_state=0).fit_predict(x))
    np.testing.assert_array_equal(a, b)
