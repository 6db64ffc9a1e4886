"""The "your own cameras" presets (``configs/<method>/own_cameras_cpu.yaml``): each runs as a
user runs it, with its label-free rule (``holdout``), its held-back clusters and its
patience, on a tiny target, for every method: the held-back images are trained on by no step,
every adapted model is scored on them, and ``best.pt`` is the step the rule keeps with the
preset's patience, replayed on the run's records."""

from __future__ import annotations

import json
import math

import pytest
from conftest import adapt_args, cc_args, past_args

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.report.report import pick_step
from adaptreid.rundir.checkpoint import load_checkpoint

ARGS = {"msplr": adapt_args, "past": past_args, "cluster_contrast": cc_args}


@pytest.fixture(scope="module")
def source_and_target(tiny_adaptation):
    return tiny_adaptation


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ARGS))
def test_own_cameras_preset_keeps_the_holdout_pick(method, source_and_target):
    tmp, ckpt, tgt = source_and_target
    preset = f"configs/{method}/own_cameras_cpu.yaml"
    cfg = load_config(preset)
    assert (cfg.adapt.select, cfg.adapt.patience, cfg.adapt.holdout) == ("holdout", 2, 0.15)
    assert cfg.data.target == "manifest"
    extra = ["adapt.holdout=0.4", "adapt.max_steps=3", "adapt.keep_steps=true", "train.amp=none"]
    args = ARGS[method](tmp, ckpt, tgt, f"own_{method}", *extra)
    args = [a for a in args if not a.startswith("adapt.patience=")]  # the preset's patience
    assert main(["adapt", "--config", preset, "-q", *args]) == 0
    run = tmp / "runs" / f"own_{method}"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    state = load_checkpoint(run / "checkpoints" / "last.pt")["loop"]
    held = state["holdout"]
    assert held, "no cluster was held back"
    scores = {r["step"]: r["holdout"] for r in recs if r["kind"] == "select"}
    steps = sorted(r["step"] for r in recs if r["kind"] == "step")
    assert math.isnan(scores[0]) and all(0 <= scores[s] <= 1 for s in steps if s > 0)
    assert state["best_step"] == pick_step(recs, "holdout", patience=2) >= 1
    for step in steps[1:]:
        kept = load_checkpoint(run / "steps" / f"step_{step}.pt")
        labels = dict(zip(kept["paths"], kept["labels"].tolist()))
        assert all(labels[p] == -1 for p in held)  # never trained on
    report = (run / "report.md").read_text()
    assert "retrieval on held-back step-1 clusters" in report


def test_own_cameras_preset_without_a_target_folder_says_what_to_give(tmp_path, capsys):
    """The preset names no target folder: the user must give one, and is told which key."""
    args = ["adapt", "--config", "configs/msplr/own_cameras_cpu.yaml", f"output_dir={tmp_path}"]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "data.target_root is empty" in err and "manifest.csv" in err
