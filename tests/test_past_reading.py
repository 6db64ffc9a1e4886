"""PAST's CTL / RTL readings (issue 29, item A; ``method.triplet_reading``), each checked by
hand on a tiny batch: the expected losses are computed here in plain Python from the
numbers, not with the code under test.

* ``per_part_cosine`` (the authors' released code, every PAST preset): each part embedding
  L2-normalised, ``d = 1 - cos``; CTL summed over the parts, RTL averaged over them;
* ``concatenated_euclidean``: the whole concatenated embedding, ``d = ||a - b||_2``.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from adaptreid.config import PACKAGE_CONFIG_DIR, load_config
from adaptreid.losses.past_loss import ConservativeLoss

ETA, M, LAM, PARTS, DIM = 4, 0.3, 0.5, 2, 3
# 4 anchors (pseudo-labels 0, 0, 1, 1), then their positives and negatives (RTL roles 1, 2)
ANCHOR_LABELS = [0, 0, 1, 1]
POS_RANKS = [1, 3, 2, 4]
NEG_RANKS = [8, 5, 7, 6]


def _numbers() -> list[list[float]]:
    rng = random.Random(29)
    # rows of very different norms, so that the normalisation matters
    return [[rng.uniform(-1, 1) * (1 + 3 * (i % 3)) for _ in range(PARTS * DIM)] for i in range(12)]


def _batch(rows):
    feat = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    batch = {
        "pid": torch.tensor([*ANCHOR_LABELS, -1, -1, -1, -1, -1, -1, -1, -1]),
        "rtl_role": torch.tensor([0] * 4 + [1] * 4 + [2] * 4),
        "rtl_rank": torch.tensor([0] * 4 + POS_RANKS + NEG_RANKS),
    }
    return feat, batch


def _euclid(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _cosine(a, b):
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 1.0 - sum(x * y for x, y in zip(a, b)) / (na * nb)


def _ctl(vectors, labels, dist):
    """Batch-hard CTL (eq. 3), mean over the anchors."""
    terms = []
    for i, (vi, li) in enumerate(zip(vectors, labels)):
        ap = max(
            dist(vi, vj) for j, (vj, lj) in enumerate(zip(vectors, labels)) if lj == li and j != i
        )
        an = min(dist(vi, vj) for vj, lj in zip(vectors, labels) if lj != li)
        terms.append(max(0.0, ap - an + M))
    return sum(terms) / len(terms)


def _rtl(anchors, positives, negatives, dist):
    """Eq. 4, mean over the anchors."""
    terms = [
        max(0.0, abs(pr - nr) / ETA * M + dist(a, p) - dist(a, n))
        for a, p, n, pr, nr in zip(anchors, positives, negatives, POS_RANKS, NEG_RANKS)
    ]
    return sum(terms) / len(terms)


def _part(row, k):
    return row[k * DIM : (k + 1) * DIM]


def _expected(rows, reading):
    a, p, n = rows[:4], rows[4:8], rows[8:]
    if reading == "concatenated_euclidean":
        return _ctl(a, ANCHOR_LABELS, _euclid), _rtl(a, p, n, _euclid)
    ctl = sum(
        _ctl([_part(r, k) for r in a], ANCHOR_LABELS, _cosine) for k in range(PARTS)
    )  # summed over the parts
    rtl = (
        sum(
            _rtl(
                [_part(r, k) for r in a],
                [_part(r, k) for r in p],
                [_part(r, k) for r in n],
                _cosine,
            )
            for k in range(PARTS)
        )
        / PARTS
    )  # averaged over the parts
    return ctl, rtl


@pytest.mark.parametrize("reading", ["per_part_cosine", "concatenated_euclidean"])
def test_conservative_loss_by_hand(reading):
    rows = _numbers()
    ctl, rtl = _expected(rows, reading)
    assert ctl > 0 and rtl > 0  # the batch exercises both terms
    feat, batch = _batch(rows)
    crit = ConservativeLoss(eta=ETA, margin=M, lam=LAM, reading=reading, num_parts=PARTS)
    total, parts = crit({"feat": feat}, batch)
    assert parts["ctl"] == pytest.approx(ctl, abs=1e-9)
    assert parts["rtl"] == pytest.approx(rtl, abs=1e-9)
    assert total.item() == pytest.approx(rtl + LAM * ctl, abs=1e-9)
    total.backward()
    assert feat.grad[4:].abs().sum() > 0  # RTL's positives and negatives are trained

    # Table 1's single-loss rows, in the same reading: weight 1 each
    ctl_only, _ = ConservativeLoss(
        eta=ETA, margin=M, use_rtl=False, reading=reading, num_parts=PARTS
    )({"feat": feat}, batch)
    rtl_only, _ = ConservativeLoss(
        eta=ETA, margin=M, use_ctl=False, reading=reading, num_parts=PARTS
    )({"feat": feat}, batch)
    assert ctl_only.item() == pytest.approx(ctl, abs=1e-9)
    assert rtl_only.item() == pytest.approx(rtl, abs=1e-9)


def test_the_two_readings_differ_on_this_batch():
    rows = _numbers()
    a, b = _expected(rows, "per_part_cosine"), _expected(rows, "concatenated_euclidean")
    assert abs(a[0] - b[0]) > 1e-3 and abs(a[1] - b[1]) > 1e-3


def test_per_part_reading_ignores_each_parts_scale():
    """Cosine on normalised parts: scaling one part of every image changes nothing."""
    rows = _numbers()
    scaled = [[x * (7.0 if i < DIM else 1.0) for i, x in enumerate(r)] for r in rows]
    crit = ConservativeLoss(eta=ETA, margin=M, reading="per_part_cosine", num_parts=PARTS)
    feat, batch = _batch(rows)
    feat2, _ = _batch(scaled)
    assert crit({"feat": feat}, batch)[0].item() == pytest.approx(
        crit({"feat": feat2}, batch)[0].item(), abs=1e-9
    )


def test_every_past_preset_uses_the_released_reading():
    for path in sorted((PACKAGE_CONFIG_DIR / "past").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.method.triplet_reading == "per_part_cosine", path.name


def test_past_conservative_stage_builds_the_configured_reading(monkeypatch):
    """The method hands its reading and the model's part count to the loss."""
    import adaptreid.methods.past as past_mod
    from adaptreid.models import HeadSettings, build_model

    monkeypatch.setattr(past_mod, "step_loader", lambda *a, **k: None)
    model = build_model(
        "resnet18",
        head=HeadSettings(name="pcb", embedding_dim=4, options={"num_parts": 3}),
    )
    for reading in ("per_part_cosine", "concatenated_euclidean"):
        cfg = load_config("configs/past/base.yaml", [f"method.triplet_reading={reading}"])
        method = past_mod.PAST(cfg, SimpleNamespace(step=1))
        stage = method.build_stage(past_mod.CONSERVATIVE, model, None, {"ranked": None})
        assert stage.criterion.reading == reading
        assert stage.criterion.num_parts == (3 if reading == "per_part_cosine" else 1)
