"""Losses vs plain-loop references (values and gradients, float64), plus the RTL sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptreid.errors import ConfigError
from adaptreid.losses import (
    CenterLoss,
    CenterOptimizer,
    CrossEntropyLabelSmooth,
    RankingTripletLoss,
    TripletLoss,
    batch_hard_triplet,
    conservative_loss,
    cross_entropy_label_smooth,
    parts_cross_entropy,
    ranking_triplet_loss,
    rescale_center_grad,
    sample_rtl_pairs,
)
from adaptreid.losses.past_loss import promoting_loss
from adaptreid.losses.reid_loss import ReidLoss

TOL = 1e-6


def _feats(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum().clamp_min(1e-12).sqrt()


def _triplet_loop(feats, labels, margin, soft_margin, normalize=False):
    """Textbook batch-hard triplet, one anchor at a time."""
    if normalize:
        feats = feats / feats.norm(dim=1, keepdim=True)
    terms, active = [], 0
    n = len(labels)
    for a in range(n):
        pos = [_dist(feats[a], feats[p]) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [_dist(feats[a], feats[q]) for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        d_ap, d_an = max(pos), min(neg)
        if soft_margin:
            terms.append(torch.log1p(torch.exp(d_ap - d_an)))
            active += int(d_ap - d_an > 0)
        else:
            terms.append(torch.clamp(d_ap - d_an + margin, min=0))
            active += int(d_ap - d_an + margin > 0)
    return sum(terms) / len(terms), active / len(terms), len(terms)


# labels with two singletons (anchors without a positive: skipped)
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 5])


@pytest.mark.parametrize(
    "margin,soft,normalize",
    [(0.3, False, False), (5.0, False, False), (0.3, True, False), (0.3, False, True)],
)
def test_triplet_matches_loop_value_and_grad(margin, soft, normalize):
    f1 = _feats(len(LABELS), 8)
    f2 = f1.detach().clone().requires_grad_(True)
    res = batch_hard_triplet(f1, LABELS, margin, soft_margin=soft, normalize=normalize)
    ref, ref_active, ref_valid = _triplet_loop(f2, LABELS.tolist(), margin, soft, normalize)
    assert res.num_valid == ref_valid == len(LABELS) - 2
    assert res.active_fraction == pytest.approx(ref_active)
    assert res.loss.item() > 0.0
    assert res.loss.item() == pytest.approx(ref.item(), abs=TOL)
    (g1,) = torch.autograd.grad(res.loss, f1)
    (g2,) = torch.autograd.grad(ref, f2)
    assert torch.allclose(g1, g2, atol=TOL)
    assert g1.abs().sum() > 0
    # singletons (3, 4) are never anchors; they may still be negatives of others
    assert res.dist_ap.shape == (len(LABELS) - 2,)


def test_triplet_large_margin_all_active_small_margin_none():
    f = _feats(8, 4, seed=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert batch_hard_triplet(f, labels, margin=100.0).active_fraction == 1.0
    # well separated clusters: hardest positive closer than hardest negative by > margin
    centers = torch.arange(4, dtype=torch.float64).repeat_interleave(2).unsqueeze(1) * 10
    f_sep = centers + 0.01 * torch.randn(8, 1, dtype=torch.float64)
    res = batch_hard_triplet(f_sep, labels, margin=0.3)
    assert res.loss.item() == 0.0 and res.active_fraction == 0.0


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7, 7, 7, 7]])
def test_triplet_no_valid_anchor_is_zero_with_grad(labels):
    f = _feats(4, 3)
    crit = TripletLoss()
    loss = crit(f, torch.tensor(labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))
    assert crit.last_stats.num_valid == 0 and crit.last_stats.active_fraction == 0.0


def test_triplet_module_keeps_stats_and_validates():
    f = _feats(len(LABELS), 5)
    crit = TripletLoss(margin=0.3, soft_margin=True)
    loss = crit(f, LABELS)
    assert not crit.last_stats.loss.requires_grad
    assert crit.last_stats.loss.item() == pytest.approx(loss.item())
    with pytest.raises(ConfigError):
        TripletLoss(margin=-1.0)
    with pytest.raises(ValueError):
        crit(f, LABELS[:-1])


def test_triplet_coincident_features_finite_grad():
    f = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    loss = batch_hard_triplet(f, torch.tensor([0, 0, 1, 1]), 0.3).loss
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    assert torch.isfinite(f.grad).all()


# --------------------------------------------------------------------------------- centre loss
def test_center_loss_value_and_feature_grad():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(4, 6, generator=g, dtype=torch.float64)
    crit = CenterLoss(4, 6, centers=centers)
    f = _feats(10, 6, seed=4)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    loss = crit(f, y)
    ref = sum(((f[i] - centers[y[i]]) ** 2).sum() for i in range(10)) / 10
    assert loss.item() == pytest.approx(ref.item(), abs=TOL)
    (g_f,) = torch.autograd.grad(loss, f)
    expected = 2.0 / 10 * (f.detach() - centers[y])
    assert torch.allclose(g_f, expected, atol=TOL)


def test_center_optimizer_rescales_gradient_by_inverse_weight():
    weight, lr = 0.005, 0.5
    c0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    crit = CenterLoss(3, 4, centers=c0)
    copt = CenterOptimizer(crit, lr=lr, weight=weight)
    f = _feats(6, 4, seed=6).detach()
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    copt.zero_grad()
    (weight * crit(f, y)).backward()
    copt.step()
    # dL_c/dc_k = -2/B * sum_{i: y_i = k} (f_i - c_k); the weight must not slow the update
    grad = torch.zeros_like(c0)
    for i in range(6):
        grad[y[i]] -= 2.0 / 6 * (f[i] - c0[y[i]])
    assert torch.allclose(crit.centers.detach(), c0 - lr * grad, atol=1e-10)


def test_rescale_center_grad_helper():
    crit = CenterLoss(2, 3)
    rescale_center_grad(crit, 0.005)  # no grad yet: no-op
    crit.centers.grad = torch.ones(2, 3)
    rescale_center_grad(crit, 0.005)
    assert torch.allclose(crit.centers.grad, torch.full((2, 3), 200.0))
    with pytest.raises(ConfigError):
        rescale_center_grad(crit, 0.0)


def test_label_smoothing_matches_manual_formula():
    logits = _feats(7, 5, seed=7)
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    eps = 0.1
    loss = CrossEntropyLabelSmooth(eps)(logits, y)
    ref = 0.0
    for i in range(7):
        logp = logits[i] - torch.logsumexp(logits[i], 0)
        for k in range(5):
            q = (1 - eps) * (k == y[i]) + eps / 5
            ref = ref - q * logp[k]
    ref = ref / 7
    assert loss.item() == pytest.approx(ref.item(), abs=TOL)
    assert torch.allclose(
        torch.autograd.grad(loss, logits)[0], torch.autograd.grad(ref, logits)[0], atol=TOL
    )
    # torch's built-in label smoothing is the same formula
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=eps).item(), abs=TOL
    )


def test_label_smoothing_zero_is_cross_entropy_and_class_count_varies():
    crit = CrossEntropyLabelSmooth(0.0)
    for c in (3, 11):
        logits = torch.randn(4, c, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, c - 1])
        assert crit(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ConfigError):
        CrossEntropyLabelSmooth(1.0)
    with pytest.raises(ValueError):
        cross_entropy_label_smooth(torch.randn(2, 3), torch.tensor([0, 3]))


# ------------------------------------------------------------- per-part logits (PCB, PAST 3.1)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_parts_cross_entropy_is_the_sum_of_per_part_losses(eps):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    loss = parts_cross_entropy(logits, y, eps)
    # by hand: for each part k, the batch mean of the smoothed CE, then the sum over k
    ref = 0.0
    for k in range(4):
        part = 0.0
        for i in range(6):
            logp = logits[i, k] - torch.logsumexp(logits[i, k], 0)
            q = torch.full((5,), eps / 5, dtype=torch.float64)
            q[y[i]] += 1 - eps
            part = part - (q * logp).sum()
        ref = ref + part / 6
    assert loss.item() == pytest.approx(ref.item(), abs=TOL)
    g1 = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    assert torch.allclose(g1, torch.autograd.grad(ref, logits)[0], atol=TOL)
    torch_ref = sum(F.cross_entropy(logits[:, k], y, label_smoothing=eps) for k in range(4))
    assert loss.item() == pytest.approx(torch_ref.item(), abs=TOL)
    # the module and the 2-D case are unchanged
    assert CrossEntropyLabelSmooth(eps)(logits, y).item() == pytest.approx(loss.item(), abs=TOL)
    flat = logits[:, 0].detach()
    assert parts_cross_entropy(flat, y, eps).item() == pytest.approx(
        cross_entropy_label_smooth(flat, y, eps).item(), abs=TOL
    )
    with pytest.raises(ValueError):
        parts_cross_entropy(torch.randn(6, 4, 5, 2), y)
    with pytest.raises(ValueError):
        parts_cross_entropy(torch.randn(5, 4, 5), y)


def test_reid_and_promoting_losses_take_per_part_logits():
    g = torch.Generator().manual_seed(4)
    feat = torch.randn(8, 6, generator=g)
    logits = torch.randn(8, 3, 5, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    batch = {"pid": y}
    crit = ReidLoss(5, 6, triplet_weight=0.0, center_weight=0.0, label_smoothing=0.1)
    total, parts = crit({"feat": feat, "logits": logits}, batch)
    ref = sum(F.cross_entropy(logits[:, k], y, label_smoothing=0.1) for k in range(3))
    assert total.item() == pytest.approx(ref.item(), abs=1e-5)
    assert parts["ce"] == pytest.approx(ref.item(), abs=1e-5)
    acc = (logits.sum(1).argmax(1) == y).float().mean().item()
    assert parts["acc"] == pytest.approx(acc)
    # PAST eq. 6 per part: plain softmax CE (no smoothing), summed over the parts
    total, _ = promoting_loss(5, 6)({"feat": feat, "logits": logits}, batch)
    ref = sum(F.cross_entropy(logits[:, k], y) for k in range(3))
    assert total.item() == pytest.approx(ref.item(), abs=1e-5)
    # one classifier (2-D logits): unchanged
    total, _ = promoting_loss(5, 6)({"feat": feat, "logits": logits[:, 1]}, batch)
    assert total.item() == pytest.approx(F.cross_entropy(logits[:, 1], y).item(), abs=1e-5)
    # with the triplet and centre terms too, CE enters with its weight
    full = ReidLoss(5, 6, ce_weight=2.0)
    total, parts = full({"feat": feat, "logits": logits}, batch)
    expected = parts["triplet"] + 2.0 * parts["ce"] + 0.005 * parts["center"]
    assert total.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------ ranking (RTL)
def _ranked(n: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        rows.append(rng.permutation(others)[:r])
    return np.stack(rows)


def test_rtl_sampling_ranges_and_coverage():
    eta = 5
    ranked = _ranked(30, 2 * eta + 3)
    anchors = np.arange(30).repeat(40)
    pos, neg, p_rank, n_rank = sample_rtl_pairs(ranked, anchors, eta, np.random.default_rng(0))
    assert p_rank.min() == 1 and p_rank.max() == eta
    assert n_rank.min() == eta + 1 and n_rank.max() == 2 * eta
    assert set(p_rank.tolist()) == set(range(1, eta + 1))
    assert set(n_rank.tolist()) == set(range(eta + 1, 2 * eta + 1))
    assert np.array_equal(pos, ranked[anchors, p_rank - 1])
    assert np.array_equal(neg, ranked[anchors, n_rank - 1])
    assert (pos != anchors).all() and (neg != anchors).all()
    for a in (pos, neg, p_rank, n_rank):
        assert a.dtype == np.int64 and a.shape == anchors.shape


def test_rtl_sampling_is_deterministic_given_seed():
    ranked = _ranked(20, 8)
    anchors = np.array([3, 1, 4, 1, 5, 9])
    a = sample_rtl_pairs(ranked, anchors, 4, np.random.default_rng(42))
    b = sample_rtl_pairs(ranked, anchors, 4, np.random.default_rng(42))
    c = sample_rtl_pairs(ranked, anchors, 4, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_rtl_sampling_errors():
    ranked = _ranked(10, 7)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2\\*eta"):
        sample_rtl_pairs(ranked, np.array([0]), 4, rng)
    with pytest.raises(ConfigError):
        sample_rtl_pairs(ranked, np.array([0]), 0, rng)
    with pytest.raises(ValueError):
        sample_rtl_pairs(ranked, np.array([10]), 3, rng)
    padded = ranked.copy()
    padded[:, 5] = -1
    with pytest.raises(ValueError, match="padding"):
        sample_rtl_pairs(padded, np.arange(10).repeat(20), 3, rng)


def test_rtl_soft_margin_by_hand():
    # 1-D features: anchor at 0; distances read off directly
    a = torch.zeros(2, 1, dtype=torch.float64)
    p = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    n = torch.tensor([[1.2], [2.0]], dtype=torch.float64)
    eta, m = 20, 0.3
    # anchor 0: |2 - 25| / 20 * 0.3 = 0.345; 0.345 + 1.0 - 1.2 = 0.145
    # anchor 1: |20 - 21| / 20 * 0.3 = 0.015; 0.015 + 0.1 - 2.0 < 0 -> 0
    loss = ranking_triplet_loss(a, p, n, np.array([2, 20]), np.array([25, 21]), eta, m)
    assert loss.item() == pytest.approx((0.145 + 0.0) / 2, abs=1e-12)
    mod = RankingTripletLoss(eta=eta, margin=m)
    assert mod(a, p, n, torch.tensor([2, 20]), torch.tensor([25, 21])).item() == pytest.approx(
        0.0725, abs=1e-12
    )


def test_rtl_matches_loop_value_and_grad():
    eta, m = 10, 0.3
    f = _feats(3 * 6, 8, seed=9)
    rng = np.random.default_rng(0)
    p_rank = rng.integers(1, eta + 1, 6)
    n_rank = rng.integers(eta + 1, 2 * eta + 1, 6)
    a, p, n = f[:6], f[6:12], f[12:]
    loss = ranking_triplet_loss(a, p, n, p_rank, n_rank, eta, m)
    f2 = f.detach().clone().requires_grad_(True)
    terms = [
        torch.clamp(
            abs(int(p_rank[i]) - int(n_rank[i])) / eta * m
            + _dist(f2[i], f2[6 + i])
            - _dist(f2[i], f2[12 + i]),
            min=0,
        )
        for i in range(6)
    ]
    ref = sum(terms) / 6
    assert loss.item() == pytest.approx(ref.item(), abs=TOL)
    assert torch.allclose(
        torch.autograd.grad(loss, f)[0], torch.autograd.grad(ref, f2)[0], atol=TOL
    )


def test_rtl_soft_margin_range_and_conservative_loss():
    # margins span [m/eta, (2 eta - 1)/eta * m] over the sampled ranks
    eta, m = 4, 0.3
    same = torch.zeros(1, 1)
    assert ranking_triplet_loss(same, same, same, [4], [5], eta, m).item() == pytest.approx(m / eta)
    assert ranking_triplet_loss(same, same, same, [1], [8], eta, m).item() == pytest.approx(
        7 / 4 * m
    )
    rtl, ctl = torch.tensor(0.4), torch.tensor(1.0)
    assert conservative_loss(rtl, ctl, 0.5).item() == pytest.approx(0.9)
    with pytest.raises(ConfigError):
        RankingTripletLoss(eta=0)
    with pytest.raises(ConfigError):
        conservative_loss(rtl, ctl, -1.0)
    z = torch.zeros(2, 1)
    assert math.isfinite(ranking_triplet_loss(z, z, z, [1, 2], [3, 4], 2).item())
