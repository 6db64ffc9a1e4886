"""Cluster contrast on the shared loop: the ClusterNCE loss and its momentum-updated memory,
a tiny run end to end, and the memory kept identical on 2 gloo ranks under DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import cc_args, torchrun, train_tiny_source, write_identity_market

from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.methods.cluster_contrast import ClusterMemoryLoss

WORKER = Path(__file__).with_name("ddp_cc_worker.py")


def test_cluster_nce_and_momentum_update_by_hand():
    torch.manual_seed(0)
    memory = torch.randn(3, 4)
    crit = ClusterMemoryLoss(memory, temperature=0.5, momentum=0.25)
    m0 = F.normalize(memory, dim=1)
    assert torch.allclose(crit.memory, m0)  # rows are normalised cluster centres
    feat = torch.randn(2, 4, requires_grad=True)
    labels = torch.tensor([2, 0])
    loss, parts = crit({"bn_feat": feat}, {"pid": labels})
    logits = F.normalize(feat, dim=1) @ m0.T / 0.5
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-6)
    loss.backward()
    assert feat.grad is not None and crit.memory.grad is None  # the memory is not learnt
    crit.update({"bn_feat": feat}, {"pid": labels})
    f = F.normalize(feat.detach(), dim=1)
    for row, lab in ((2, 0), (0, 1)):
        expected = 0.25 * m0[row] + 0.75 * f[lab]
        assert torch.allclose(crit.memory[row], expected / expected.norm(), atol=1e-6)
    assert torch.allclose(crit.memory[1], m0[1])  # untouched cluster
    assert set(crit.state_dict()) == {"memory"}  # checkpointed with the trainer


def test_cluster_contrast_run_records_memory_training(tmp_path):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    cfg = load_config(
        "cluster_contrast/base.yaml", cc_args(tmp_path, ckpt, tgt, "cc"), command="adapt"
    )
    run = adapt(cfg, verbose=False)
    recs = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [(r["step"], r["epoch"]) for r in epochs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all("nce" in r and 0 <= r["acc"] <= 1 for r in epochs)
    lrs = [r["lr"] for r in epochs]
    assert lrs == pytest.approx([3.5e-4] * 4)  # constant within a step, no warm-up
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1, 2]


@pytest.mark.slow
def test_memory_stays_identical_across_two_gloo_ranks(tmp_path):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    out = tmp_path / "out"
    out.mkdir()
    args = cc_args(tmp_path, ckpt, tgt, "ddp_cc", "device=cpu")
    ddp = torchrun(WORKER, out, *args)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    r0 = json.loads((out / "cc_rank0.json").read_text())
    r1 = json.loads((out / "cc_rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    # every update saw the batches of both ranks and left the same memory on both
    assert len(r0["memory"]) == len(r1["memory"]) > 0
    assert r0["memory"] == r1["memory"]
    assert r0["batch"] == [2 * b for b in r0["local_batch"]]  # gathered from both ranks
