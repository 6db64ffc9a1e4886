"""Camera-aware proxies (CAP, Wang et al., AAAI 2021) in cluster contrast: proxy assignment,
the intra- and inter-camera losses computed by hand, the proxy memory's lookup and momentum
update, and a tiny run with ``method.memory: camera_proxy``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cc_args, train_tiny_source, write_identity_market

from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.losses.camera_proxy import camera_proxy_losses
from adaptreid.methods.cluster_contrast import CameraProxyMemoryLoss
from adaptreid.pseudo.centroids import camera_proxies, cluster_means


def test_proxies_split_each_cluster_by_camera():
    labels = np.array([1, 0, 1, -1, 0, 1, 2])
    camids = np.array([5, 3, 5, 3, 7, 3, 7])
    proxy, p_cluster, p_camera = camera_proxies(labels, camids)
    # proxies by cluster, then camera: (0,3) (0,7) (1,3) (1,5) (2,7)
    assert p_cluster.tolist() == [0, 0, 1, 1, 2]
    assert p_camera.tolist() == [3, 7, 3, 5, 7]
    assert proxy.tolist() == [3, 0, 3, -1, 1, 2, 4]
    means = cluster_means(torch.arange(14.0).reshape(7, 2), proxy)
    assert means[3].tolist() == [2.0, 3.0]  # images 0 and 2
    with pytest.raises(ValueError, match="camera ids"):
        camera_proxies(labels, camids[:3])


def _by_hand(logits, proxy, p_cluster, p_camera, k):
    """The module docstring's formulas, one image at a time."""
    n, num = logits.shape
    intra_by_cam: dict[int, list[float]] = {}
    inter = []
    for i in range(n):
        s = logits[i].tolist()
        j = int(proxy[i])
        cam, cl = int(p_camera[j]), int(p_cluster[j])
        same = [q for q in range(num) if int(p_camera[q]) == cam]
        intra_by_cam.setdefault(cam, []).append(
            -(s[j] - math.log(sum(math.exp(s[q]) for q in same)))
        )
        pos = [q for q in range(num) if int(p_cluster[q]) == cl]
        neg = sorted((q for q in range(num) if int(p_cluster[q]) != cl), key=lambda q: -s[q])[:k]
        denom = math.log(sum(math.exp(s[q]) for q in pos + neg))
        inter.append(-sum(s[p] - denom for p in pos) / len(pos))
    l_intra = sum(sum(v) / len(v) for v in intra_by_cam.values())
    return l_intra, sum(inter) / n


@pytest.mark.parametrize("k", [0, 1, 2, 50])
def test_losses_match_the_formulas_by_hand(k):
    gen = torch.Generator().manual_seed(3)
    p_cluster = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    p_camera = torch.tensor([1, 2, 1, 3, 2, 1, 2])
    proxy = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3])
    logits = torch.randn(len(proxy), len(p_cluster), generator=gen) * 3
    got = camera_proxy_losses(logits, proxy, p_cluster, p_camera, hard_negatives=k)
    want = _by_hand(logits, proxy, p_cluster, p_camera, k)
    assert got[0].item() == pytest.approx(want[0], rel=1e-5)
    assert got[1].item() == pytest.approx(want[1], rel=1e-5)


def test_proxy_memory_lookup_and_momentum_update_by_hand():
    torch.manual_seed(0)
    memory = torch.randn(5, 4)
    crit = CameraProxyMemoryLoss(
        memory,
        torch.tensor([0, 0, 1, 1, 2]),
        torch.tensor([3, 7, 3, 5, 7]),
        temperature=0.5,
        momentum=0.25,
        inter_weight=0.5,
        hard_negatives=2,
    )
    m0 = F.normalize(memory, dim=1)
    assert torch.allclose(crit.memory, m0)
    pids, cams = torch.tensor([1, 0, 2]), torch.tensor([5, 7, 7])
    assert crit.proxy_of(pids, cams).tolist() == [3, 1, 4]
    with pytest.raises(ValueError, match="cluster 2, camera 3"):
        crit.proxy_of(torch.tensor([2]), torch.tensor([3]))
    with pytest.raises(ValueError, match="camera 4"):
        crit.proxy_of(torch.tensor([0]), torch.tensor([4]))
    feat = torch.randn(3, 4, requires_grad=True)
    loss, parts = crit({"bn_feat": feat}, {"pid": pids, "camid": cams})
    logits = F.normalize(feat, dim=1) @ m0.T / 0.5
    intra, inter = camera_proxy_losses(
        logits, torch.tensor([3, 1, 4]), crit.proxy_cluster, crit.proxy_camera, hard_negatives=2
    )
    assert loss.item() == pytest.approx((intra + 0.5 * inter).item(), abs=1e-6)
    assert parts["intra"] == pytest.approx(intra.item()) and 0 <= parts["acc"] <= 1
    loss.backward()
    assert feat.grad is not None and crit.memory.grad is None
    crit.update({"bn_feat": feat}, {"pid": pids, "camid": cams})
    f = F.normalize(feat.detach(), dim=1)
    for row, i in ((3, 0), (1, 1), (4, 2)):
        expected = 0.25 * m0[row] + 0.75 * f[i]
        assert torch.allclose(crit.memory[row], expected / expected.norm(), atol=1e-6)
    for row in (0, 2):
        assert torch.allclose(crit.memory[row], m0[row])
    assert "memory" in crit.state_dict()


def test_camera_proxy_run_records_both_losses(tmp_path):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    args = [*cc_args(tmp_path, ckpt, tgt, "cap"), "method.memory=camera_proxy"]
    cfg = load_config("cluster_contrast/base.yaml", args, command="adapt")
    run = adapt(cfg, verbose=False)
    recs = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert epochs and all(
        math.isfinite(r["intra"]) and math.isfinite(r["inter"]) and "nce" not in r for r in epochs
    )
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1, 2]
