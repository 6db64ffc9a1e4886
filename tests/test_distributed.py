"""DDP on the CPU: two gloo processes under torchrun end with identical weights, and their
loss is close to a single-process run on the same data."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import _write_market

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_single_process(tmp_path):
    data = _write_market(tmp_path / "m", ids=tuple(range(1, 9)))
    out = tmp_path / "out"
    out.mkdir()
    epochs = "4"
    single = subprocess.run(
        [sys.executable, str(WORKER), str(data), str(out), epochs],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(WORKER),
            str(data),
            str(out),
            epochs,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    r0 = torch.load(out / "rank0_w2.pt", weights_only=True)
    r1 = torch.load(out / "rank1_w2.pt", weights_only=True)
    s = torch.load(out / "rank0_w1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    # identical weights on both ranks (DDP averages gradients; centre grads all-reduced)
    for k, v in r0["model"].items():
        if "running" in k or "num_batches" in k:
            continue  # BN statistics are per rank (no SyncBN), by design
        assert torch.equal(v, r1["model"][k]), k
    assert torch.equal(r0["center"], r1["center"])
    # the weights did change from their initialisation, and the rank-0 loss is reduced
    # over ranks, so both report the same number
    assert r0["losses"] == pytest.approx(r1["losses"])
    assert np.isfinite(r0["losses"]).all()
    # close to the single-process run: same data, same recipe, twice the batch per step
    assert r0["losses"][-1] == pytest.approx(s["losses"][-1], rel=0.25)
    assert r0["losses"][-1] < r0["losses"][0]


ADAPT_WORKER = Path(__file__).with_name("ddp_adapt_worker.py")


@pytest.mark.slow
def test_adapt_clusters_once_and_every_rank_trains_on_the_same_labels(tmp_path):
    """MSPLR under torchrun with 2 gloo processes: only rank 0 runs auto-eps and clustering,
    once per step, and both ranks train on identical pseudo-labels (broadcast)."""
    import json

    from adaptreid.config import load_config
    from adaptreid.methods.source import train_source

    src_root, tgt_root = tmp_path / "syn-src", tmp_path / "syn-tgt"
    cfg = load_config(
        "demo/source.yaml",
        [
            f"output_dir={tmp_path}",
            "name=src",
            f"data.source_root={src_root}",
            f"data.target_root={tgt_root}",
            "data.source_options.preset=tiny",
            "data.target_options.preset=tiny",
            "data.num_workers=0",
            "train.epochs=1",
            "optim.warmup_epochs=0",
        ],
    )
    train_source(cfg, verbose=False)
    ckpt = tmp_path / "src" / "checkpoints" / "best.pt"
    out = tmp_path / "out"
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(ADAPT_WORKER),
            str(ckpt),
            str(tgt_root),
            str(out),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    r0 = json.loads((out / "adapt_rank0_w2.json").read_text())
    r1 = json.loads((out / "adapt_rank1_w2.json").read_text())
    assert r0["world"] == r1["world"] == 2 and (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["cluster_calls"] == r0["auto_eps_calls"] == 2  # two steps, on rank 0 only
    assert r1["cluster_calls"] == r1["auto_eps_calls"] == 0
    assert len(r0["labels"]) == 2 and r0["labels"] == r1["labels"]
    # one run folder, written by rank 0, with both steps
    steps = [
        json.loads(line)
        for line in (out / "adapt_w2" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "step"' in line
    ]
    assert [s["step"] for s in steps] == [0, 1, 2]
