"""Approximate neighbours (inverted lists searched by dense products, exact distances) and the
ranking table read from the Jaccard pass's own neighbour table (issue 27, "A million images").

* with an exhaustive candidate set (``nprobe = nlist``) the approximate path gives the exact
  path's neighbours (indices equal, distances to float rounding) and the same Jaccard distance;
* recall against the exact path is a number in [0, 1];
* the ranking table from the Jaccard pass's table equals the one its own search finds (no
  faiss needed);
* faiss missing: a clear error naming the install and the setting that needs nothing;
* ``pseudo.neighbors`` is validated (config and settings), with "did you mean".

Tests that need faiss skip when it is not installed.
"""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
import torch

from adaptreid.config import load_config
from adaptreid.errors import ConfigError, MissingDependencyError
from adaptreid.pseudo import ann
from adaptreid.pseudo.kreciprocal import jaccard_distance, jaccard_with_neighbors
from adaptreid.pseudo.ranking import ranked_neighbors
from adaptreid.pseudo.settings import NeighborSettings, PseudoSettings
from adaptreid.pseudo.topk import _knn_torch, decode_keys


def _clustered(n=600, d=32, ids=40, seed=0):
    """Unit rows around ``ids`` centres (continuous values: no exact ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d)).astype(np.float32)
    pid = rng.integers(0, ids, n)
    x = centres[pid] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), pid


def _integer_features(n=300, d=8, seed=1):
    """Small integers around a few centres, with exact duplicate rows: every distance is exact
    in float32, so rankings (ties included) are well defined."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-6, 7, size=(12, d))
    x = centres[rng.integers(0, 12, n)] + rng.integers(-2, 3, size=(n, d))
    x[5] = x[4]
    x[17] = x[4]
    return x.astype(np.float32)


def recall(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over rows of |approximate top-k n exact top-k| / k."""
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits) / exact_idx.shape[1])


# --------------------------------------------------------------------------------------------
# the approximate path (needs faiss)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,drop", [(1, -1), (7, -1), (21, -1), (21, 0), (21, 3)])
def test_exhaustive_probes_give_the_exact_neighbours(k, drop):
    """nprobe = nlist: every row is searched against every row with the exact path's
    formula, so the neighbours are the exact path's whatever space the lists are built in
    (on these unit rows no two distances are within float rounding of each other at the
    k-th place)."""
    pytest.importorskip("faiss")
    x, _ = _clustered()
    xt = torch.from_numpy(x)
    exact_keys, exact_max = _knn_torch(xt, None, k, 128, False)
    st = NeighborSettings(mode="approximate", nlist=12, nprobe=12, drop_components=drop)
    keys, rowmax, info = ann.approximate_knn(xt, k, st)
    assert info["nlist"] == info["nprobe"] == 12
    ed, ei = decode_keys(exact_keys)
    ad, ai = decode_keys(keys)
    np.testing.assert_array_equal(ai, ei)
    np.testing.assert_allclose(ad, ed, rtol=1e-5, atol=1e-6)
    assert (ai[:, 0] == np.arange(len(x))).all() and (ad[:, 0] == 0).all()
    # the row maxima are lower bounds of the true ones, never below a listed distance
    assert (rowmax <= exact_max * (1 + 1e-5) + 1e-6).all()
    assert (rowmax >= torch.from_numpy(ad[:, -1])).all()


def test_exhaustive_approximate_jaccard_matches_the_exact_one():
    pytest.importorskip("faiss")
    x, _ = _clustered(n=500)
    exact = jaccard_distance(x, k1=10, k2=4, neighbors="exact")
    st = NeighborSettings(mode="approximate", nlist=10, nprobe=10)
    approx = jaccard_distance(x, k1=10, k2=4, neighbors=st)
    # the same neighbours, so the same stored pairs; only the row maxima (the normalisation
    # before eq. 7's kernel) are estimated, which moves the values a little
    np.testing.assert_array_equal(approx.indptr, exact.indptr)
    np.testing.assert_array_equal(approx.indices, exact.indices)
    assert abs(exact - approx).max() < 0.05


def test_recall_is_reported_in_unit_interval():
    pytest.importorskip("faiss")
    x, _ = _clustered(n=800, ids=60)
    xt = torch.from_numpy(x)
    _, ei = decode_keys(_knn_torch(xt, None, 15, 256, False)[0])
    seen = []
    for nprobe in (1, 3, 20):
        keys, _, _ = ann.approximate_knn(xt, 15, NeighborSettings(nlist=20, nprobe=nprobe))
        r = recall(decode_keys(keys)[1], ei)
        assert 0.0 <= r <= 1.0
        seen.append(r)
    assert seen[-1] == 1.0 and seen[0] <= seen[1] <= seen[2]


def test_lists_short_of_candidates_probe_more_lists():
    """Tiny lists and one probe: a list's own rows are fewer than k, so it is searched
    against more lists until they hold k rows: every row has k distinct neighbours, itself
    first, at distances that are exact and sorted."""
    pytest.importorskip("faiss")
    x, _ = _clustered(n=300, ids=30)
    xt = torch.from_numpy(x)
    st = NeighborSettings(nlist=30, nprobe=1, spill=1)
    keys, _, info = ann.approximate_knn(xt, 25, st)
    dist, idx = decode_keys(keys)
    assert info["largest_list"] < 25  # so every list needed more probes
    assert (idx[:, 0] == np.arange(len(x))).all()
    assert all(len(set(r)) == 25 for r in idx.tolist())
    assert (np.diff(dist, axis=1) >= 0).all()
    direct = ((x[:, None, :] - x[idx]) ** 2).sum(-1)
    direct[:, 0] = 0.0
    np.testing.assert_allclose(dist, direct, rtol=1e-4, atol=1e-5)


def test_merge_keeps_each_index_once_at_its_smaller_distance():
    """A row searched from two lists finds a neighbour twice (two products, distances that
    may differ in the last bit): the merge keeps it once, at the smaller distance, and the k
    smallest of what is left, sorted."""
    from adaptreid.pseudo.topk import _encode

    d = torch.tensor([[0.0, 0.5, 0.2, 0.9, 0.5000001, 0.2, 0.7, 0.1]])
    i = torch.tensor([[3, 7, 5, 1, 7, 5, 2, 9]])
    dist, idx = decode_keys(ann._merge(_encode(d, i), 4))
    np.testing.assert_array_equal(idx, [[3, 9, 5, 7]])
    np.testing.assert_allclose(dist, [[0.0, 0.1, 0.2, 0.5]])


def test_spilling_finds_the_neighbours_across_a_list_border(monkeypatch):
    """800 rows around 60 centres in 80 lists: k-means splits some groups across two lists.
    With each row only in its nearest list and one probe, rows near a border miss the part
    of their group across it; with each row in its two nearest lists (as a candidate and as
    a query) more of the exact neighbours are found. The weak-row search is off, so that
    spilling alone is measured (most of these rows are weak and would be searched again)."""
    pytest.importorskip("faiss")
    monkeypatch.setattr(ann, "MAX_LEVELS", 1)
    x, _ = _clustered(n=800, ids=60)
    xt = torch.from_numpy(x)
    _, ei = decode_keys(_knn_torch(xt, None, 12, 256, False)[0])
    got = {}
    for spill in (1, 2):
        st = NeighborSettings(nlist=80, nprobe=1, spill=spill)
        got[spill] = recall(decode_keys(ann.approximate_knn(xt, 12, st)[0])[1], ei)
    assert got[1] < got[2] <= 1.0


def test_weak_rows_are_searched_again_among_themselves(monkeypatch):
    """150 people, 20 lists from a 20-row sample: most people have no list that stands for
    them, so their rows are weak (their nearest centroid barely more similar than the 8th).
    Searching the weak rows again among themselves finds more of the exact neighbours than
    the first level alone; with the weak rows few enough, that search is exact, so each
    weak row's neighbours among the weak rows are the exact ones."""
    pytest.importorskip("faiss")
    x, _ = _clustered(n=900, d=64, ids=150)
    xt = torch.from_numpy(x)
    _, ei = decode_keys(_knn_torch(xt, None, 6, 256, False)[0])
    st = NeighborSettings(nlist=20, nprobe=1, spill=1, train_per_list=1)
    keys, _, info = ann.approximate_knn(xt, 6, st)
    first = info["levels"][0]
    assert first["weak"] > 0 and info["levels"][1]["exact"] and info["weak_left"] == 0
    monkeypatch.setattr(ann, "MAX_LEVELS", 1)
    alone, _, info1 = ann.approximate_knn(xt, 6, st)
    assert len(info1["levels"]) == 1
    r_levels = recall(decode_keys(keys)[1], ei)
    r_alone = recall(decode_keys(alone)[1], ei)
    assert r_alone < r_levels <= 1.0


def test_list_space_drops_the_components_before_an_eigenvalue_gap():
    """Three strong shared directions (camera offsets) over isotropic rows: the gap rule
    projects exactly those three out; isotropic rows alone have no gap and keep everything;
    ``drop`` fixes the number."""
    rng = np.random.default_rng(0)
    d = 24
    base = rng.standard_normal((3000, d))
    offsets = np.linalg.qr(rng.standard_normal((d, 3)))[0].T * 6.0  # three orthogonal axes
    shifted = base + offsets[rng.integers(0, 3, 3000)] * rng.choice([-1, 1], (3000, 1))
    mean, basis = ann.list_space(torch.from_numpy(shifted))
    assert basis.shape == (d, 3)
    # the dropped span is the offsets' span: projecting the offsets on it keeps them whole
    proj = torch.from_numpy(offsets).float() @ basis
    np.testing.assert_allclose(proj.norm(dim=1).numpy(), 6.0, rtol=0.05)
    assert ann.list_space(torch.from_numpy(base))[1].shape == (d, 0)
    assert ann.list_space(torch.from_numpy(base), drop=2)[1].shape == (d, 2)
    assert ann.list_space(torch.from_numpy(base), drop=0)[1].shape == (d, 0)


def test_approximate_mode_through_jaccard_with_neighbors_is_deterministic():
    pytest.importorskip("faiss")
    x, _ = _clustered(n=400)
    st = NeighborSettings(mode="approximate", nprobe=2)
    a, ta = jaccard_with_neighbors(x, 8, 3, num_neighbors=11, neighbors=st)
    b, tb = jaccard_with_neighbors(x, 8, 3, num_neighbors=11, neighbors=st)
    assert (a != b).nnz == 0 and (ta == tb).all() and ta.shape == (400, 11)


# --------------------------------------------------------------------------------------------
# the ranking table from the Jaccard pass (no faiss)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k1,k2,num", [(4, 2, 12), (6, 3, 30), (20, 6, 40)])
def test_reused_ranking_table_equals_its_own_search(k1, k2, num):
    x = _integer_features()
    jac, table = jaccard_with_neighbors(x, k1, k2, num_neighbors=num + 1, neighbors="exact")
    # the Jaccard distance is the one jaccard_distance computes, bit for bit
    assert (jac != jaccard_distance(x, k1, k2, neighbors="exact")).nnz == 0
    own = ranked_neighbors(jac, num, features=x)
    reused = ranked_neighbors(jac, num, neighbors=table)
    rows = np.repeat(np.arange(len(x)), np.diff(jac.indptr))
    stored = np.bincount(rows[(jac.indices != rows) & (jac.data < 1)], minlength=len(x))
    assert (stored < num).any()  # some rows are filled by euclidean distance
    np.testing.assert_array_equal(reused, own)
    assert (reused >= 0).all()


def test_ranking_table_too_narrow_is_refused():
    x = _integer_features()
    jac, table = jaccard_with_neighbors(x, 4, 2, num_neighbors=10, neighbors="exact")
    with pytest.raises(ValueError, match="num_neighbors=13"):
        ranked_neighbors(jac, 12, neighbors=table)


def test_step_features_rank_from_the_jaccard_pass(monkeypatch):
    """StepFeatures computes one neighbour search for the Jaccard distance and the table."""
    from adaptreid.config import PseudoConfig
    from adaptreid.engine import pseudo_step
    from adaptreid.engine.extract import Features

    x = _integer_features()
    cam = np.arange(len(x)) % 3
    feats = Features(feats=torch.from_numpy(x), pids=np.zeros(len(x), int), camids=cam)
    cfg = PseudoConfig(distance="jaccard", k1=6, k2=3, camera_norm=False, l2_after=False)
    sf = pseudo_step.StepFeatures(feats, cfg, ranking=30)
    searches = []
    real = pseudo_step.ranked_neighbors

    def spy(jac, num, *, features=None, neighbors=None):
        searches.append(neighbors is not None)
        return real(jac, num, features=features, neighbors=neighbors)

    monkeypatch.setattr(pseudo_step, "ranked_neighbors", spy)
    table = sf.ranked(30)
    assert searches == [True]  # the Jaccard pass's table was wide enough
    jac = jaccard_distance(x, 6, 3, neighbors="exact")
    np.testing.assert_array_equal(table, real(jac, 30, features=x))
    assert sf.neighbor_mode() == "exact" and sf.shards_jaccard()


# --------------------------------------------------------------------------------------------
# missing faiss, settings, config
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_faiss(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss" or name.startswith("faiss."):
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_approximate_without_faiss_is_a_clear_error(no_faiss):
    x, _ = _clustered(n=100)
    with pytest.raises(MissingDependencyError, match=r"adaptreid\[faiss\].*'exact'"):
        jaccard_distance(x, 5, 2, neighbors="approximate")
    with pytest.raises(ImportError):  # also an ImportError, for callers that catch those
        ann.approximate_knn(torch.from_numpy(x), 5)


def test_auto_without_faiss_warns_and_is_exact(no_faiss):
    x, _ = _clustered(n=120)
    st = NeighborSettings(mode="auto", auto_min_n=100)
    with pytest.warns(UserWarning, match="faiss is not installed"):
        got = jaccard_distance(x, 5, 2, neighbors=st)
    assert (got != jaccard_distance(x, 5, 2, neighbors="exact")).nnz == 0


def test_auto_below_the_threshold_is_exact_without_asking_for_faiss(no_faiss, recwarn):
    st, mode = ann.resolve_neighbors(NeighborSettings(mode="auto", auto_min_n=1000), 999)
    assert mode == "exact" and not recwarn.list
    assert ann.resolve_neighbors(None, 10**7) == (NeighborSettings(), "exact")


def test_auto_switches_at_auto_min_n():
    pytest.importorskip("faiss")
    st = NeighborSettings(mode="auto", auto_min_n=500)
    assert ann.resolve_neighbors(st, 499)[1] == "exact"
    assert ann.resolve_neighbors(st, 500)[1] == "approximate"
    assert ann.resolve_neighbors("exact", 10**7)[1] == "exact"


def test_neighbor_settings_are_validated():
    with pytest.raises(ConfigError, match="Did you mean 'approximate'"):
        NeighborSettings(mode="aproximate")
    with pytest.raises(ConfigError, match="nprobe must be a non-negative integer"):
        NeighborSettings(nprobe=-1)
    with pytest.raises(ConfigError, match="auto_min_n must be a positive integer"):
        NeighborSettings(auto_min_n=0)
    with pytest.raises(ConfigError, match="spill must be a positive integer"):
        NeighborSettings(spill=0)
    with pytest.raises(ConfigError, match="drop_components must be an integer >= -1"):
        NeighborSettings(drop_components=-2)
    with pytest.raises(TypeError, match="neighbors must be"):
        ann.resolve_neighbors(3, 10)
    st = NeighborSettings()
    assert st.lists(200_000) == round(4 * 200_000**0.5) and st.lists(100) == 12
    assert st.probes(4) == 4 and NeighborSettings(nprobe=2).probes(10) == 2


def test_config_key_is_validated_and_reaches_the_settings():
    with pytest.raises(ConfigError, match="pseudo.neighbors.*Did you mean 'approximate'"):
        load_config(overrides=["pseudo.neighbors=approximat"])
    cfg = load_config(overrides=["pseudo.neighbors=approximate", "pseudo.neighbors_nprobe=16"])
    st = PseudoSettings.from_config(cfg.pseudo, seed=3)
    assert st.neighbors == NeighborSettings(mode="approximate", nprobe=16, seed=3)
    assert PseudoSettings.from_config(load_config().pseudo).neighbors.mode == "auto"
