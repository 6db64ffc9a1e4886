"""Kill soak (issue 15): for every adaptation method, a small run is SIGKILLed at 10 random
points (seeded) in sequence, resumed after each kill, and must end with the same pseudo-labels,
the same metrics and the same records (none lost, none twice) as an uninterrupted run.

Kills use ``ADAPTREID_CRASH_AT=<point>@<n>`` (adaptreid/runtime/faults.py): the process kills
itself the n-th time it reaches the point: ``cluster`` (pseudo-labels made, not yet saved),
``train_step`` (after an optimiser step) or ``checkpoint_write`` (a checkpoint's temporary
file written, not yet renamed)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import adapt_args, cc_args, past_args

from adaptreid.rundir.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KILLS = 10
#: points and how many times each may be reached before the kill (all reachable from any
#: resume point: a resume restarts at most one epoch back)
POINTS = {"cluster": 1, "train_step": 3, "checkpoint_write": 3}


@pytest.fixture(scope="module")
def setup(tiny_adaptation):
    return tiny_adaptation


#: long enough for 10 kills: each kill costs at most the epoch it interrupts
LONGER = ["adapt.max_steps=4"]


def _command(method: str, tmp, ckpt, tgt, name: str) -> list[str]:
    config, args = {
        "msplr": ("configs/msplr/base.yaml", adapt_args(tmp, ckpt, tgt, name, *LONGER)),
        "past": ("configs/past/base.yaml", past_args(tmp, ckpt, tgt, name, *LONGER)),
        "cluster_contrast": (
            "configs/cluster_contrast/base.yaml",
            cc_args(tmp, ckpt, tgt, name, *LONGER),
        ),
    }[method]
    return [sys.executable, "-m", "adaptreid", "adapt", "--config", config, "-q", *args]


def _run(cmd, crash=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ADAPTREID_CRASH_AT", None)
    if crash:
        env["ADAPTREID_CRASH_AT"] = crash
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(records: list[dict]) -> dict:
    return {
        "kinds": [(r["kind"], r.get("step"), r.get("epoch"), r.get("stage")) for r in records],
        "steps": [(r["step"], r["mAP"], r["rank1"]) for r in records if r["kind"] == "step"],
        "labels": [r["num_clusters"] for r in records if r["kind"] == "labels"],
        "losses": [r["loss"] for r in records if r["kind"] == "epoch"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", ["msplr", "past", "cluster_contrast"])
def test_ten_kills_then_resume_equal_an_uninterrupted_run(setup, method):
    tmp, ckpt, tgt = setup
    ref = _run(_command(method, tmp, ckpt, tgt, f"{method}_ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    name = f"{method}_soak"
    cmd = _command(method, tmp, ckpt, tgt, name)
    rng = random.Random(f"soak-{method}")
    kills, resume = [], False
    for _ in range(KILLS):
        point = rng.choice(sorted(POINTS))
        crash = f"{point}@{rng.randint(1, POINTS[point])}"
        res = _run(cmd + (["--resume"] if resume else []), crash=crash)
        assert res.returncode in (-9, 0), res.stderr[-2000:]
        if res.returncode == 0:
            break  # finished before reaching the point: nothing left to kill
        kills.append(crash)
        resume = True
        # whatever the kill left behind loads (never half-written)
        load_checkpoint(tmp / "runs" / name / "checkpoints" / "last.pt")
    else:
        res = _run(cmd + ["--resume"])
        assert res.returncode == 0, res.stderr[-2000:]
    assert len(kills) == KILLS, kills  # every planned point was reached and killed
    run, ref_run = tmp / "runs" / name, tmp / "runs" / f"{method}_ref"
    got, want = _summary(_records(run)), _summary(_records(ref_run))
    assert got["kinds"] == want["kinds"]  # no record lost, none twice
    assert got["labels"] == want["labels"]
    np.testing.assert_allclose(got["steps"], want["steps"], atol=1e-6)
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
    a = load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["labels"].numpy()
    b = load_checkpoint(ref_run / "checkpoints" / "last.pt")["loop"]["labels"].numpy()
    assert np.array_equal(a, b)
    assert not list((run / "checkpoints").glob(".*.tmp"))
