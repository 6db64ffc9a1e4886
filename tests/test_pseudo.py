"""Tests of the pseudo-label toolkit: camera normalisation (MSPLR eq. 4), clustering, cluster
selection (MSPLR section 3.4), statistics / label quality, the pipeline and the eps sweep."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from adaptreid.errors import ConfigError, TrainingError
from adaptreid.pseudo import dbscan as dbscan_mod
from adaptreid.pseudo.camera_norm import camera_normalize
from adaptreid.pseudo.cluster_base import relabel, within_radius
from adaptreid.pseudo.clustering import cluster
from adaptreid.pseudo.dbscan import kth_neighbor_distance, radius_neighbors_graph
from adaptreid.pseudo.labels import PseudoLabels, make_pseudo_labels, recommend_eps, sweep_eps
from adaptreid.pseudo.quality import label_quality, pair_counts, pseudo_label_stats
from adaptreid.pseudo.selection import select_clusters


def blobs(ids=10, cams=3, per_cam=3, dim=32, noise=0.15, cam_shift=0.0, seed=0):
    """Features of ``ids`` identities seen by ``cams`` cameras, ``per_cam`` images each; every
    camera adds its own offset (the camera shift eq. 4 removes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    shifts = rng.normal(size=(cams, dim)) * cam_shift
    pid = np.repeat(np.arange(ids), cams * per_cam)
    cam = np.tile(np.repeat(np.arange(cams), per_cam), ids)
    x = centres[pid] + shifts[cam] + noise * rng.normal(size=(len(pid), dim))
    return x.astype(np.float32), pid, cam


def jaccard_or_skip():
    try:
        from adaptreid.pseudo.kreciprocal import jaccard_distance
    except ImportError as err:  # pragma: no cover - the module is developed in parallel
        pytest.skip(f"adaptreid.pseudo.kreciprocal.jaccard_distance not available: {err}")
    return jaccard_distance


# ------------------------------------------------------------------------------------------
# camera normalisation (eq. 4)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True])
def test_camera_normalize_zero_mean_unit_std_per_camera(as_tensor):
    rng = np.random.default_rng(1)
    cams = np.repeat([3, 7, 9], [20, 30, 25])
    x = rng.normal(size=(75, 8)) * rng.uniform(0.5, 4, size=8) + cams[:, None]
    x = x.astype(np.float32)
    inp = torch.from_numpy(x) if as_tensor else x
    out = camera_normalize(inp, cams, l2_after=False)
    assert type(out) is type(inp) and out.dtype == inp.dtype and out.shape == inp.shape
    out = np.asarray(out)
    for c in (3, 7, 9):
        sub = out[cams == c].astype(np.float64)
        np.testing.assert_allclose(sub.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(sub.std(0, ddof=0), 1.0, atol=1e-5)  # population std
    # default: rows are re-L2-normalised after eq. 4
    unit = np.asarray(camera_normalize(inp, cams))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        unit, out / np.linalg.norm(out, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )


def test_camera_normalize_guards_constant_dimension():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5))
    cams = np.repeat([0, 1], 20)
    x[:, 2] = 3.5  # constant everywhere
    x[cams == 1, 4] = -1.0  # constant within camera 1 only
    out = camera_normalize(x, cams, l2_after=False)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 2], 0.0)
    np.testing.assert_array_equal(out[cams == 1, 4], 0.0)
    np.testing.assert_allclose(out[cams == 0, 4].std(), 1.0, atol=1e-9)


def test_camera_normalize_single_camera_warns_and_is_global_zscore():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)) * 3 + 1
    with pytest.warns(UserWarning, match="single camera"):
        out = camera_normalize(x, np.zeros(30, int), l2_after=False)
    np.testing.assert_allclose(out, (x - x.mean(0)) / x.std(0), atol=1e-12)


def test_camera_normalize_single_image_camera_warns_and_becomes_zero():
    x = np.random.default_rng(4).normal(size=(11, 4))
    cams = np.array([0] * 10 + [1])
    with pytest.warns(UserWarning, match="single image"):
        out = camera_normalize(x, cams)
    np.testing.assert_array_equal(out[10], 0.0)
    assert np.isfinite(out).all()


def test_camera_normalize_bad_shapes():
    with pytest.raises(ValueError, match="camids"):
        camera_normalize(np.zeros((4, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="2-D"):
        camera_normalize(np.zeros(4), [0, 1, 2, 3])


# ------------------------------------------------------------------------------------------
# clustering
# ------------------------------------------------------------------------------------------


def test_relabel_first_appearance():
    np.testing.assert_array_equal(relabel([5, 5, -1, 2, 9, 2, -3]), [0, 0, -1, 1, 2, 1, -1])
    assert relabel([]).shape == (0,)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_radius_graph_equals_dense_threshold(metric):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(157, 6)).astype(np.float32)
    x[10] = x[3]  # exact duplicates: distance 0 must be stored (explicit zero)
    from sklearn.metrics import pairwise_distances

    dense = pairwise_distances(x.astype(np.float64), metric=metric)
    np.fill_diagonal(dense, 0.0)
    radius = float(np.quantile(dense, 0.05))
    g = radius_neighbors_graph(x, radius, metric=metric, block_size=40)  # several blocks
    assert (g != g.T).nnz == 0
    want = dense <= radius
    got = np.zeros_like(want)
    coo = g.tocoo()
    got[coo.row, coo.col] = True
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], atol=1e-12)
    assert g[3, 10] == 0 and ((coo.row == 3) & (coo.col == 10)).any()
    # each row sorted by distance (scikit-learn's layout for precomputed graphs)
    for i in range(0, 157, 13):
        row = g.data[g.indptr[i] : g.indptr[i + 1]]
        assert (np.diff(row) >= 0).all()
    sub = within_radius(g, radius / 2)
    assert sub.nnz == int((dense <= radius / 2).sum())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sparse_dbscan_equals_dense_dbscan(metric):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    x[20] = x[21] = x[22]  # duplicates
    from sklearn.metrics import pairwise_distances

    dense = pairwise_distances(x.astype(np.float64), metric=metric)
    for q in (0.005, 0.01, 0.02):
        eps = float(np.quantile(dense[dense > 0], q))
        for ms in (1, 4, 6):
            got = cluster(x, eps=eps, min_samples=ms, metric=metric, block_size=128)
            want = relabel(DBSCAN(eps=eps, min_samples=ms, metric=metric).fit_predict(x))
            np.testing.assert_array_equal(got, want)
            assert got.max() >= 0  # not a trivial all-outlier case


def test_sparse_precomputed_dbscan_counts_self_like_dense():
    """A sparse distance without a stored diagonal gives the dense result: each point counts
    itself towards min_samples (scikit-learn adds the diagonal)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(120, 3))
    from sklearn.metrics import pairwise_distances

    dense = pairwise_distances(x)
    eps = float(np.quantile(dense[dense > 0], 0.05))
    rows, cols = np.nonzero((dense <= eps) & ~np.eye(120, dtype=bool))
    no_diag = sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=dense.shape)
    for ms in (2, 3, 5):
        want = relabel(DBSCAN(eps=eps, min_samples=ms, metric="precomputed").fit_predict(dense))
        np.testing.assert_array_equal(cluster(distance=no_diag, eps=eps, min_samples=ms), want)
        np.testing.assert_array_equal(cluster(distance=dense, eps=eps, min_samples=ms), want)


def test_dbscan_euclidean_recovers_blobs():
    x, pid, cam = blobs()
    xn = camera_normalize(x, cam)
    lab = cluster(xn, method="dbscan", eps=0.42, min_samples=4)
    assert lab.min() >= 0 and len(np.unique(lab)) == 10
    assert adjusted_rand_score(pid, lab) == 1.0
    assert lab[0] == 0  # relabelled in order of first appearance


def test_dbscan_on_sparse_jaccard_recovers_blobs_and_matches_dense():
    jaccard_distance = jaccard_or_skip()
    from adaptreid.pseudo.kreciprocal import sparse_distance_to_dense

    x, pid, cam = blobs(per_cam=4)
    xn = camera_normalize(x, cam)
    jac = jaccard_distance(xn, k1=8, k2=3)
    assert sp.issparse(jac)
    lab = cluster(distance=jac, eps=0.6, min_samples=4)
    assert adjusted_rand_score(pid, lab) == 1.0
    dense = sparse_distance_to_dense(jac, fill=1.0)
    for eps in (0.3, 0.5, 0.7):
        want = relabel(DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense))
        np.testing.assert_array_equal(cluster(distance=jac, eps=eps, min_samples=4), want)


def test_kmeans_default_k_is_n_over_15():
    x, pid, cam = blobs(ids=10, cams=3, per_cam=5)  # N = 150 -> k = 10 (eq. 1)
    lab = cluster(x, method="kmeans", seed=0, n_init=3)
    assert lab.min() >= 0 and len(np.unique(lab)) == 150 // 15
    assert adjusted_rand_score(pid, lab) == 1.0
    assert len(np.unique(cluster(x, method="kmeans", k=4))) == 4
    with pytest.raises(ConfigError, match="k-means"):
        cluster(x, method="kmeans", k=151)


def test_hdbscan_on_features_and_on_precomputed_jaccard():
    x, pid, cam = blobs(per_cam=4)  # 12 images per identity
    xn = camera_normalize(x, cam)
    lab = cluster(xn, method="hdbscan", min_cluster_size=5)
    assert adjusted_rand_score(pid, lab) == 1.0
    jaccard_distance = jaccard_or_skip()
    jac = jaccard_distance(xn, k1=8, k2=3)
    lab = cluster(xn, method="hdbscan", distance=jac, min_cluster_size=5)
    assert adjusted_rand_score(pid, lab) == 1.0
    # the sparse distance is clustered as such at every N (no fallback to the features);
    # densifying is an explicit choice, refused above its limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lab = cluster(method="hdbscan", distance=jac, min_cluster_size=5, hdbscan_dense_limit=10)
    assert adjusted_rand_score(pid, lab) == 1.0
    dense = cluster(method="hdbscan", distance=jac, min_cluster_size=5, hdbscan_impl="dense")
    np.testing.assert_array_equal(lab, dense)
    with pytest.raises(ConfigError, match="densif"):
        cluster(
            method="hdbscan",
            distance=jac,
            min_cluster_size=5,
            hdbscan_impl="dense",
            hdbscan_dense_limit=10,
        )


def test_cluster_rejects_bad_options():
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(ConfigError, match="method"):
        cluster(x, method="spectral")
    with pytest.raises(ConfigError, match="eps"):
        cluster(x, eps=0)
    with pytest.raises(ConfigError, match="features or"):
        cluster()
    with pytest.raises(ConfigError, match="square"):
        cluster(distance=np.zeros((3, 4)))
    with pytest.raises(ConfigError, match="metric"):
        cluster(x, metric="manhattan")


def test_kth_neighbor_distance_features_and_sparse_agree():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    from sklearn.metrics import pairwise_distances

    dense = pairwise_distances(x.astype(np.float64))
    want = np.sort(dense, axis=1)[:, 3]  # 4th neighbour, self first
    np.testing.assert_allclose(kth_neighbor_distance(x, k=4), want, rtol=1e-4, atol=1e-5)
    g = radius_neighbors_graph(x, float(want.max()))
    np.testing.assert_allclose(kth_neighbor_distance(distance=g, k=4), want, atol=1e-12)
    np.testing.assert_allclose(kth_neighbor_distance(distance=dense, k=4), want, atol=1e-12)


# ------------------------------------------------------------------------------------------
# selection (section 3.4)
# ------------------------------------------------------------------------------------------


def test_select_clusters_drops_small_and_single_camera_and_relabels():
    #          cluster 7: 4 imgs, 2 cams | 3: 2 imgs | 5: 4 imgs 1 cam | outlier | 9: 5 imgs
    lab = np.array([7, 7, 7, 7, 3, 3, 5, 5, 5, 5, -1, 9, 9, 9, 9, 9])
    cam = np.array([0, 1, 0, 0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 1, 1, 1])
    new, info = select_clusters(lab, cam, min_size=4, min_cameras=2)
    np.testing.assert_array_equal(new, [0, 0, 0, 0] + [-1] * 7 + [1] * 5)
    assert info["clusters_before"] == 4 and info["clusters_after"] == 2
    assert info["dropped_by_size"] == 1 and info["dropped_by_cameras"] == 1
    assert info["images_kept"] == 9 and not info["camera_rule_skipped"]
    # each rule switchable
    new, info = select_clusters(lab, cam, enforce_cameras=False)
    assert info["clusters_after"] == 3 and (new[6:10] == 1).all()
    new, info = select_clusters(lab, cam, enforce_size=False)
    assert info["clusters_after"] == 3 and (new[4:6] == 1).all()
    new, info = select_clusters(lab, None, enforce_size=False, enforce_cameras=False)
    np.testing.assert_array_equal(new, relabel(lab))
    with pytest.raises(ConfigError, match="camera ids"):
        select_clusters(lab, None)


def test_select_clusters_single_camera_target_skips_camera_rule_with_warning():
    lab = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, -1])
    with pytest.warns(UserWarning, match="skipping the camera rule"):
        new, info = select_clusters(lab, np.zeros(10, int), min_size=4)
    np.testing.assert_array_equal(new, lab)
    assert info["camera_rule_skipped"] and info["clusters_after"] == 2


# ------------------------------------------------------------------------------------------
# statistics and quality
# ------------------------------------------------------------------------------------------


def test_quality_perfect_labels_are_all_one():
    truth = np.array([4, 4, 4, 8, 8, 1, 1, 1, 1])
    q = label_quality(np.array([0, 0, 0, 2, 2, 5, 5, 5, 5]), truth)
    for key in ("precision", "recall", "f1", "nmi", "ari"):
        assert q[key] == pytest.approx(1.0)
    assert q["num_images"] == 9 and q["num_true_ids"] == 3


def test_quality_hand_computed_example():
    # clusters {0,1,2} {3,4} and outlier 5; identities a a b | b b | a
    pred = np.array([0, 0, 0, 1, 1, -1])
    true = np.array(["a", "a", "b", "b", "b", "a"])
    # kept images only: same-cluster pairs (0,1)(0,2)(1,2)(3,4) = 4, of which (0,1)(3,4)
    # share the identity = 2; same-identity pairs among kept: a:(0,1)=1, b:(2,3)(2,4)(3,4)=3
    q = label_quality(pred, true)
    assert q["precision"] == pytest.approx(2 / 4)
    assert q["recall"] == pytest.approx(2 / 4)
    assert q["f1"] == pytest.approx(0.5)
    assert q["num_images"] == 5
    # outliers as singletons: identity a has 3 images -> 3 pairs, b 3 pairs: recall 2/6
    q = label_quality(pred, true, include_outliers=True)
    assert q["precision"] == pytest.approx(2 / 4)
    assert q["recall"] == pytest.approx(2 / 6)
    assert q["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert q["num_images"] == 6


def _brute_force_pairs(pred, true):
    both = same_p = same_t = 0
    for i, j in itertools.combinations(range(len(pred)), 2):
        sp_, st = pred[i] == pred[j], true[i] == true[j]
        both += sp_ and st
        same_p += sp_
        same_t += st
    return both, same_p, same_t


@pytest.mark.parametrize("include_outliers", [False, True])
def test_quality_matches_brute_force_pair_loop(include_outliers):
    rng = np.random.default_rng(9)
    for _ in range(5):
        pred = rng.integers(-1, 6, size=80)
        true = rng.integers(0, 8, size=80)
        q = label_quality(pred, true, include_outliers=include_outliers)
        if include_outliers:
            p2 = pred.copy()
            p2[pred < 0] = 100 + np.arange((pred < 0).sum())
            both, same_p, same_t = _brute_force_pairs(p2, true)
        else:
            keep = pred >= 0
            both, same_p, same_t = _brute_force_pairs(pred[keep], true[keep])
        assert pair_counts(*((p2, true) if include_outliers else (pred[keep], true[keep]))) == (
            both,
            same_p,
            same_t,
        )
        assert q["precision"] == pytest.approx(both / same_p)
        assert q["recall"] == pytest.approx(both / same_t)
        assert q["f1"] == pytest.approx(2 * both / (same_p + same_t))


def test_quality_all_outliers_is_zero_not_nan():
    q = label_quality(np.full(5, -1), np.arange(5))
    assert q["num_images"] == 0 and q["precision"] == 0.0 and q["f1"] == 0.0


def test_pseudo_label_stats():
    lab = np.array([0, 0, 0, 1, 1, 1, 1, -1, -1, 2, 2])
    cam = np.array([0, 1, 0, 2, 2, 2, 2, 0, 1, 0, 3])
    s = pseudo_label_stats(lab, cam)
    assert s["num_clusters"] == 3 and s["num_outliers"] == 2 and s["num_images"] == 11
    assert s["portion_kept"] == pytest.approx(9 / 11)
    assert s["multi_camera_fraction"] == pytest.approx(2 / 3)
    assert (s["size_min"], s["size_max"], s["size_median"]) == (2, 4, 3.0)
    assert s["size_mean"] == pytest.approx(3.0) and s["num_cameras"] == 4
    assert pseudo_label_stats(np.full(3, -1))["num_clusters"] == 0


# ------------------------------------------------------------------------------------------
# the pipeline, errors, eps sweep
# ------------------------------------------------------------------------------------------


def test_make_pseudo_labels_camera_norm_turns_camera_clusters_into_identities():
    # a strong camera shift: without eq. 4 each (identity, camera) group is its own cluster,
    # all single-camera, so selection drops everything and the error says why
    x, pid, cam = blobs(per_cam=4, cam_shift=3.0, noise=0.1)
    with pytest.raises(TrainingError) as err:
        make_pseudo_labels(x, cam, camera_norm=False, eps=0.25)
    msg = str(err.value)
    assert "found 30 cluster(s)" in msg and "30 seen by < 2 cameras" in msg
    assert "camera_norm" in msg
    res = make_pseudo_labels(x, cam, eps=0.25, true_pids=pid)
    assert isinstance(res, PseudoLabels)
    assert res.num_clusters == 10 and res.stats["multi_camera_fraction"] == 1.0
    assert res.stats["portion_kept"] == 1.0 and (res.labels >= 0).all()
    assert res.quality["f1"] == 1.0 and res.quality["ari"] == 1.0
    assert res.params["eps"] == 0.25 and res.params["min_samples"] == 4
    # labels never depend on the ground truth
    np.testing.assert_array_equal(make_pseudo_labels(x, cam, eps=0.25).labels, res.labels)


def test_make_pseudo_labels_other_methods():
    x, pid, cam = blobs(per_cam=4)
    res = make_pseudo_labels(torch.from_numpy(x), torch.from_numpy(cam), method="kmeans", k=10)
    assert res.params["k"] == 10 and res.stats["num_outliers"] == 0
    assert adjusted_rand_score(pid, res.labels) == 1.0
    assert make_pseudo_labels(x, cam, method="kmeans").params["k"] == len(x) // 15
    jaccard_or_skip()
    res = make_pseudo_labels(x, cam, distance="jaccard", eps=0.6, k1=8, k2=3, true_pids=pid)
    assert res.quality["ari"] == 1.0 and res.params["k1"] == 8
    res = make_pseudo_labels(
        x, cam, method="hdbscan", distance="jaccard", min_cluster_size=5, k1=8, k2=3
    )
    assert adjusted_rand_score(pid, res.labels) == 1.0
    with pytest.raises(ConfigError, match="0 < eps < 1"):
        make_pseudo_labels(x, cam, distance="jaccard", eps=1.0)
    # k-means cannot cluster a distance matrix: with PAST's Jaccard distance (Table 2's
    # k-means row) it clusters the prepared features, and says so in params
    km = make_pseudo_labels(x, cam, method="kmeans", distance="jaccard", k=10)
    assert km.params["distance"] == "euclidean" and adjusted_rand_score(pid, km.labels) == 1.0


def test_no_cluster_raises_training_error_with_eps_suggestion():
    x, pid, cam = blobs()
    with pytest.raises(TrainingError, match=r"try eps=0\.\d\d") as err:
        make_pseudo_labels(x, cam, eps=0.01)
    msg = str(err.value)
    assert "found 0 cluster(s)" in msg and "median" in msg
    suggested = float(msg.split("try eps=")[1][:4])
    # the suggestion is usable: it yields clusters
    assert make_pseudo_labels(x, cam, eps=suggested).num_clusters > 0


def test_single_camera_target_degrades_with_warnings():
    x, pid, _ = blobs(cams=1, per_cam=6)
    cam = np.zeros(len(x), int)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = make_pseudo_labels(x, cam, eps=0.42, true_pids=pid)
    texts = " ".join(str(w.message) for w in rec)
    assert "single camera" in texts and "skipping the camera rule" in texts
    assert res.num_clusters == 10 and res.stats["camera_rule_skipped"]
    assert res.stats["multi_camera_fraction"] == 0.0


def test_sweep_computes_graph_once_and_recommends_right_eps(monkeypatch):
    x, pid, cam = blobs(cam_shift=1.0)
    calls = []
    real = dbscan_mod.radius_neighbors_graph

    def counting(*args, **kwargs):
        calls.append(kwargs.get("metric"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dbscan_mod, "radius_neighbors_graph", counting)
    eps_values = np.round(np.arange(0.05, 1.5, 0.05), 2)
    rows = sweep_eps(x, cam, eps_values, true_pids=pid)
    assert len(calls) == 1
    assert [r["eps"] for r in rows] == sorted(eps_values.tolist())
    assert rows[0]["clusters"] == 0 and rows[-1]["clusters"] <= 2  # too small / too large
    eps, reason = recommend_eps(rows)
    assert "portion kept" in reason and "F1" in reason
    best = make_pseudo_labels(x, cam, eps=eps, true_pids=pid)
    assert best.num_clusters == 10 and best.quality["f1"] == 1.0
    # each row equals the one-shot pipeline at that eps
    row = next(r for r in rows if r["eps"] == eps)
    assert row["clusters"] == 10 and row["portion_kept"] == best.stats["portion_kept"]
    # recommend_eps ignores the ground-truth columns
    no_truth = [{k: v for k, v in r.items() if k not in ("f1", "precision")} for r in rows]
    assert recommend_eps(no_truth)[0] == eps


def test_sweep_jaccard_and_failures():
    jaccard_or_skip()
    x, pid, cam = blobs(per_cam=4)
    rows = sweep_eps(x, cam, [0.3, 0.6, 0.9], distance="jaccard", k1=8, k2=3)
    assert [r["eps"] for r in rows] == [0.3, 0.6, 0.9] and "f1" not in rows[0]
    with pytest.raises(ConfigError, match="< 1"):
        sweep_eps(x, cam, [0.5, 1.0], distance="jaccard")
    with pytest.raises(TrainingError, match="larger eps"):
        recommend_eps(sweep_eps(x, cam, [0.01, 0.02]))


def test_recommend_eps_skips_chained_giant_clusters():
    from adaptreid.pseudo.labels import recommend_eps

    def row(eps, clusters, kept, mx, med):
        return {
            "eps": eps,
            "clusters": clusters,
            "portion_kept": kept,
            "score": clusters * kept,
            "max_cluster_size": mx,
            "median_cluster_size": med,
        }

    rows = [row(0.8, 10, 0.2, 20, 8), row(0.9, 11, 0.3, 30, 12), row(1.0, 9, 0.7, 300, 14)]
    eps, reason = recommend_eps(rows)
    assert eps == 0.9  # 1.0 scores higher (6.3) but one cluster is 21x the median: chained
    assert "giant" in reason
    # with no admissible eps, the plain score decides
    eps, _ = recommend_eps([row(1.0, 9, 0.7, 300, 14)])
    assert eps == 1.0


def test_recommend_eps_keeps_under_the_growth_cap():
    """``pseudo.max_kept_growth``: eps keeping more than ``max_portion`` are left out; when
    every eps with a cluster keeps more, the one keeping the fewest is taken."""
    from adaptreid.pseudo.labels import recommend_eps

    def row(eps, clusters, kept):
        return {"eps": eps, "clusters": clusters, "portion_kept": kept, "score": clusters * kept}

    rows = [row(0.4, 10, 0.2), row(0.5, 12, 0.35), row(0.6, 14, 0.5), row(0.7, 13, 0.6)]
    assert recommend_eps(rows)[0] == 0.7  # 7.8, the best score
    eps, reason = recommend_eps(rows, max_portion=0.4)
    assert eps == 0.5 and "at most 40.0%" in reason  # 0.6 and 0.7 keep more than 40%
    assert recommend_eps(rows, max_portion=0.1)[0] == 0.4  # all above: the fewest kept
    assert recommend_eps(rows, max_portion=1.0) == recommend_eps(rows)
    with pytest.raises(ConfigError, match="max_portion"):
        recommend_eps(rows, max_portion=0.0)


def test_recommend_eps_keeps_at_least_the_floor():
    """``pseudo.kept_never_shrinks``: eps keeping fewer than ``min_portion`` are left out; when
    none keeps as many, the one keeping the most is taken; a chained eps is never forced."""
    from adaptreid.pseudo.labels import recommend_eps

    def row(eps, clusters, kept, biggest=10):
        return {
            "eps": eps,
            "clusters": clusters,
            "portion_kept": kept,
            "score": clusters * kept,
            "max_cluster_size": biggest,
            "median_cluster_size": 8,
        }

    rows = [row(0.2, 30, 0.2), row(0.3, 28, 0.3), row(0.4, 16, 0.45), row(0.5, 12, 0.55)]
    assert recommend_eps(rows)[0] == 0.3  # 8.4, the best score
    eps, reason = recommend_eps(rows, min_portion=0.4)
    assert eps == 0.4 and "at least the last labels' 40.0%" in reason  # 7.2 beats 6.6
    assert recommend_eps(rows, min_portion=0.3) == recommend_eps(rows)  # 0.3 reaches it
    eps, reason = recommend_eps(rows, min_portion=0.9)
    assert eps == 0.5 and "the one keeping the most" in reason
    # the giant-cluster guard first: 0.5 chains, so a floor of 0.5 falls back to 0.4
    chained = [*rows[:3], row(0.5, 12, 0.55, biggest=200)]
    assert recommend_eps(chained, min_portion=0.5)[0] == 0.4
    # a looser guard (pseudo.giant_factor) admits the 0.5 whose largest cluster is 25x the
    # median: it keeps the most, so the floor of 0.5 takes it
    assert recommend_eps(chained, min_portion=0.5, giant_factor=30)[0] == 0.5
    assert recommend_eps(chained, giant_factor=30)[0] == 0.3  # no floor: the best score
    with pytest.raises(ConfigError, match="giant_factor"):
        recommend_eps(rows, giant_factor=1.0)
    # both bounds: at least 25%, at most 50%
    assert recommend_eps(rows, max_portion=0.5, min_portion=0.25)[0] == 0.3
    with pytest.raises(ConfigError, match="min_portion"):
        recommend_eps(rows, min_portion=1.5)


def test_one_cluster_holding_most_images_counts_as_chained():
    from adaptreid.pseudo.labels import recommend_eps

    rows = [
        {
            "eps": 0.9,
            "clusters": 10,
            "portion_kept": 0.15,
            "score": 1.5,
            "images_kept": 90,
            "max_cluster_size": 15,
            "median_cluster_size": 8,
        },
        # 2 clusters, 98% of 600 images kept, one of them huge: the median is giant too
        {
            "eps": 1.0,
            "clusters": 2,
            "portion_kept": 0.98,
            "score": 1.96,
            "images_kept": 588,
            "max_cluster_size": 580,
            "median_cluster_size": 294,
        },
    ]
    assert recommend_eps(rows)[0] == 0.9


def test_auto_eps_candidates_positive_and_fixed_on_jaccard():
    """Tiny neighbour distances (tight clusters) must not round to an eps of 0; on the Jaccard
    distance the candidates are the fixed grid whatever the features."""
    from adaptreid.pseudo.labels import JACCARD_EPS_GRID, auto_eps

    x, pid, cam = blobs(per_cam=4)
    tight = (
        x * 1e-4
        + np.repeat(
            np.eye(x.shape[1])[: len(np.unique(pid))], len(x) // len(np.unique(pid)), axis=0
        )[: len(x)]
    )
    _, rows, _ = auto_eps(tight, cam, camera_norm=False, l2_after=False, min_size=2)
    assert rows and all(r["eps"] > 0 for r in rows)
    jaccard_or_skip()
    _, rows, _ = auto_eps(x, cam, distance="jaccard", k1=8, k2=3)
    assert [r["eps"] for r in rows] == list(JACCARD_EPS_GRID)
