"""Evaluation metrics: the vectorised code against plain per-query loops written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptreid.errors import DatasetError
from adaptreid.evaluation import RankResult, evaluate_rank, pairwise_distance, top_k_matches
from adaptreid.evaluation.metrics import SingleGalleryShot, stable_argsort_rows

# ------------------------------------------------------------------------ reference (plain loops)


def reference_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank, sgs=False, repeats=10, seed=0):
    """Market-1501 protocol, one query at a time, as written in the protocol's definition."""
    num_q, num_g = dist.shape
    cmcs, aps, inps = [], [], []
    for i in range(num_q):
        order = np.argsort(dist[i], kind="stable")
        kept = [
            j
            for j in order
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ]
        rel = [g_pids[j] == q_pids[i] for j in kept]
        if not any(rel):
            continue
        hits, precisions, last = 0, [], 0
        for k, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                precisions.append(hits / k)
                last = k
        aps.append(sum(precisions) / hits)
        inps.append(hits / last)
        cmc = np.zeros(max_rank)
        if not sgs:
            first = rel.index(True) + 1
            cmc = np.array([1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)])
        else:
            ids = sorted(set(g_pids.tolist()) - {-1})
            draws = np.random.default_rng((seed, i)).random((repeats, len(ids)))
            for rep in range(repeats):
                drawn = set()
                for k, pid in enumerate(ids):
                    images = [j for j in range(num_g) if g_pids[j] == pid and j in kept]
                    if images:
                        drawn.add(images[min(int(draws[rep, k] * len(images)), len(images) - 1)])
                sampled = [j for j in kept if j in drawn]
                first = next(k for k, j in enumerate(sampled, 1) if g_pids[j] == q_pids[i])
                cmc += [1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)]
            cmc /= repeats
        cmcs.append(cmc)
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def random_problem(seed, num_q=40, num_g=70, levels=5, offset=0.0):
    """Distances on a few levels (many ties); some queries have no match. With ``offset=0.1``
    the values are not float32-representable, which takes the other sorting path."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(-2, levels - 2, size=(num_q, num_g)) + offset
    g_pids = rng.integers(0, 10, size=num_g)
    g_pids[rng.random(num_g) < 0.1] = -1  # junk
    g_cams = rng.integers(0, 3, size=num_g)
    q_pids = rng.integers(0, 13, size=num_q)  # pids 10..12 never appear in the gallery
    q_cams = rng.integers(0, 3, size=num_q)
    # One query whose identity is only in its own camera: it must be skipped too.
    g_pids[:3], g_cams[:3] = 50, 1
    q_pids[0], q_cams[0] = 50, 1
    return dist, q_pids, g_pids, q_cams, g_cams


# ------------------------------------------------------------------------------------ ranking


def test_stable_argsort_rows_equals_numpy_stable_with_ties():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 4, size=(30, 200)).astype(np.float32)
    d[0, :5] = [np.inf, -0.0, 0.0, np.inf, -np.inf]
    np.testing.assert_array_equal(stable_argsort_rows(d), np.argsort(d, axis=1, kind="stable"))
    d = rng.random((5, 300), dtype=np.float32)
    np.testing.assert_array_equal(stable_argsort_rows(d), np.argsort(d, axis=1, kind="stable"))
    d = rng.integers(0, 4, size=(30, 200)) * 0.1  # float64, not float32-representable
    np.testing.assert_array_equal(stable_argsort_rows(d), np.argsort(d, axis=1, kind="stable"))
    d = rng.random((5, 300))
    np.testing.assert_array_equal(stable_argsort_rows(d), np.argsort(d, axis=1, kind="stable"))
    ints = rng.integers(0, 3, size=(4, 50))
    np.testing.assert_array_equal(stable_argsort_rows(ints), np.argsort(ints, 1, kind="stable"))
    assert stable_argsort_rows(np.zeros((3, 1))).tolist() == [[0], [0], [0]]


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("seed,offset", [(0, 0.0), (1, 0.0), (2, 0.1)])
def test_market_protocol_equals_reference(chunk_size, seed, offset):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(seed, offset=offset)
    for max_rank in (1, 10, 100):  # 100 > gallery size: the curve's tail is 1
        res = evaluate_rank(
            dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, chunk_size=chunk_size
        )
        cmc, m_ap, m_inp, num_valid = reference_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
        assert res.cmc.shape == (max_rank,)
        np.testing.assert_allclose(res.cmc, cmc, rtol=0, atol=1e-6)
        assert res.mAP == pytest.approx(m_ap, abs=1e-6)
        assert res.mINP == pytest.approx(m_inp, abs=1e-6)
        assert res.num_valid_queries == num_valid
        assert 0 < num_valid < len(q_pids)  # the data really has skipped queries
        assert res.num_queries == len(q_pids)
        assert np.isnan(res.ap[0]) and np.isnan(res.inp[0])  # own-camera-only identity
    assert res.cmc[-1] == 1.0


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_single_gallery_shot_equals_reference_and_is_seeded(chunk_size):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(3, num_q=25, num_g=60, levels=8)
    kw = dict(max_rank=20)
    sgs = SingleGalleryShot(num_repeats=4, seed=5)
    res = evaluate_rank(
        dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk_size, single_gallery_shot=sgs, **kw
    )
    cmc, m_ap, m_inp, num_valid = reference_rank(
        dist, q_pids, g_pids, q_cams, g_cams, 20, sgs=True, repeats=4, seed=5
    )
    np.testing.assert_allclose(res.cmc, cmc, rtol=0, atol=1e-6)
    # AP and INP stay on the full list (torchreid's eval_cuhk03 does the same).
    full = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert res.mAP == pytest.approx(m_ap, abs=1e-6) == full.mAP
    assert res.mINP == pytest.approx(m_inp, abs=1e-6) == full.mINP
    assert res.num_valid_queries == num_valid
    # One image per identity: the first match is within the first (number of identities).
    num_ids = len(set(g_pids.tolist()) - {-1})
    assert np.all(res.cmc[num_ids - 1 :] == 1.0) and not np.all(full.cmc[num_ids - 1 :] == 1.0)
    again = evaluate_rank(
        dist, q_pids, g_pids, q_cams, g_cams, chunk_size=3, single_gallery_shot=sgs, **kw
    )
    np.testing.assert_array_equal(again.cmc, res.cmc)
    other_sgs = SingleGalleryShot(num_repeats=4, seed=6)
    other = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, single_gallery_shot=other_sgs, **kw)
    assert not np.array_equal(other.cmc, res.cmc)


def test_hand_computed_example():
    # Gallery:  junk, pid2, pid1 (query's camera: removed), pid1, pid3, pid1 (tie with pid3)
    dist = np.array([[0.05, 0.1, 0.2, 0.3, 0.4, 0.4]])
    g_pids = np.array([-1, 2, 1, 1, 3, 1])
    g_cams = np.array([0, 1, 0, 1, 1, 2])
    # Kept ranking: pid2, pid1, pid3, pid1 (the tie goes to the earlier gallery entry).
    res = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=5)
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res.mINP == pytest.approx(2 / 4)
    np.testing.assert_array_equal(res.cmc, [0, 1, 1, 1, 1])
    idx, match = top_k_matches(dist, np.array([1]), g_pids, np.array([0]), g_cams, k=5)
    assert idx.tolist() == [[1, 3, 4, 5, -1]]
    assert match.tolist() == [[False, True, False, True, False]]
    # A perfect ranking: AP = INP = rank-1 = 1.
    res = evaluate_rank(
        np.array([[0.1, 0.2, 0.9]]), np.array([7]), np.array([7, 7, 8]), [0], [1, 2, 1]
    )
    assert (res.mAP, res.mINP, res.rank(1)) == (1.0, 1.0, 1.0)


def test_torch_inputs_equal_numpy():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(4)
    ref = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=9)
    res = evaluate_rank(
        torch.from_numpy(dist).to(torch.bfloat16),  # small integers: exact in bfloat16
        torch.from_numpy(q_pids),
        torch.from_numpy(g_pids),
        torch.from_numpy(q_cams),
        torch.from_numpy(g_cams),
        chunk_size=9,
    )
    np.testing.assert_allclose(res.cmc, ref.cmc, atol=1e-12)
    assert (res.mAP, res.mINP) == (ref.mAP, ref.mINP)


def test_no_valid_query_raises_and_bad_inputs():
    dist = np.zeros((2, 3))
    with pytest.raises(DatasetError, match="none of the 2 queries"):
        evaluate_rank(dist, [1, 2], [1, 3, 4], [0, 0], [0, 1, 1])  # pid 1 only in its camera
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_rank(dist, [1], [1, 3, 4], [0, 0], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((2, 3), np.nan), [1, 2], [1, 2, 4], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(dist, [1, 2], [1, 2, 4], [0, 0], [1, 1, 1], max_rank=0)


def test_result_dict_and_table():
    res = RankResult(
        cmc=np.linspace(0.5, 1.0, 10),
        mAP=0.4,
        mINP=0.1,
        num_valid_queries=9,
        num_queries=10,
        ap=np.zeros(10),
        inp=np.zeros(10),
    )
    d = res.as_dict()
    assert d["rank1"] == 0.5 and d["rank10"] == 1.0 and d["mAP"] == 0.4 and d["mINP"] == 0.1
    assert d["rank5"] == pytest.approx(0.5 + 4 * 0.5 / 9)
    table = res.format_table()
    assert "mAP" in table and "40.00%" in table and "Rank-10" in table and "9 of 10" in table
    short = RankResult(np.ones(3), 1.0, 1.0, 1, 1, np.ones(1), np.ones(1))
    assert "rank5" not in short.as_dict() and "Rank-5" not in short.format_table()
    with pytest.raises(ValueError, match="rank-5"):
        short.rank(5)


# -------------------------------------------------------------------------------- rank lists


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_top_k_matches_equals_reference(chunk_size):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(5, num_g=30)
    k = 40  # more than the gallery: rows are padded
    idx, match = top_k_matches(dist, q_pids, g_pids, q_cams, g_cams, k=k, chunk_size=chunk_size)
    assert idx.shape == match.shape == (len(q_pids), k)
    for i in range(len(q_pids)):
        kept = [
            j
            for j in np.argsort(dist[i], kind="stable")
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ][:k]
        n = len(kept)
        assert idx[i, :n].tolist() == kept and np.all(idx[i, n:] == -1)
        assert match[i, :n].tolist() == [g_pids[j] == q_pids[i] for j in kept]
        assert not match[i, n:].any()


# --------------------------------------------------------------------------------- distances


def test_distances_equal_direct_formulas():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(13, 8)), rng.normal(size=(17, 8))
    diff = q[:, None, :] - g[None, :, :]
    sq = (diff**2).sum(-1)
    cos = (q @ g.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None]
    for block in (1, 4, 100):
        np.testing.assert_allclose(pairwise_distance(q, g, block_size=block), np.sqrt(sq))
        np.testing.assert_allclose(
            pairwise_distance(q, g, "sqeuclidean", block_size=block), sq, rtol=1e-10
        )
        np.testing.assert_allclose(
            pairwise_distance(q, g, "cosine", block_size=block), 1 - cos, atol=1e-12
        )
    d64 = pairwise_distance(q, g)
    assert isinstance(d64, np.ndarray) and d64.dtype == np.float64
    d32 = pairwise_distance(torch.from_numpy(q).float(), g.astype(np.float32))
    assert isinstance(d32, torch.Tensor) and d32.dtype == torch.float32
    np.testing.assert_allclose(d32.numpy(), np.sqrt(sq), atol=1e-4)
    # Identical vectors: exactly zero, never NaN from a slightly negative square.
    same = pairwise_distance(q.astype(np.float32), q.astype(np.float32))
    assert np.all(np.isfinite(same)) and np.allclose(np.diag(same), 0, atol=2e-3)
    # Cosine normalises inside: scaling features changes nothing; zero vectors give 1.
    np.testing.assert_allclose(
        pairwise_distance(q * 7.0, g, "cosine"), pairwise_distance(q, g, "cosine"), atol=1e-12
    )
    z = pairwise_distance(np.zeros((1, 8)), g, "cosine")
    np.testing.assert_allclose(z, 1.0)


def test_distance_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="feature sizes differ"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distance(np.zeros(3), np.zeros((2, 3)))


def test_distance_then_metrics_end_to_end():
    # Well-separated identities: every metric is perfect with either distance.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16)) * 10
    g_pids = np.repeat(np.arange(6), 4)
    g_cams = np.tile(np.arange(4), 6)
    q_pids, q_cams = np.arange(6), np.zeros(6, dtype=int)
    g = centres[g_pids] + rng.normal(size=(24, 16)) * 0.1
    q = centres[q_pids] + rng.normal(size=(6, 16)) * 0.1
    for metric in ("euclidean", "cosine"):
        res = evaluate_rank(pairwise_distance(q, g, metric), q_pids, g_pids, q_cams, g_cams)
        assert res.rank(1) == 1.0 and res.mAP == pytest.approx(1.0)
        assert res.mINP == pytest.approx(1.0)
