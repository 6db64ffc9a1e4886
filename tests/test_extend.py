"""``--resume adapt.max_steps=N``: a finished (or killed) adaptation run goes on to N steps when a
larger ``adapt.max_steps`` is the only difference from its saved config; any other difference
keeps the saved config, as every resume does."""

from __future__ import annotations

import json

import torch
import yaml
from conftest import DEMO_TINY_ADAPT

from adaptreid.config import load_config
from adaptreid.engine.loop import adapt


def _cfg(tmp_path, name, *extra):
    return load_config(
        "demo/msplr.yaml",
        [
            f"output_dir={tmp_path}",
            f"name={name}",
            f"data.target_root={tmp_path / 'data-tgt'}",
            *DEMO_TINY_ADAPT,
            "model.backbone=small_cnn",
            "model.last_stride=2",
            "adapt.init_checkpoint=",
            "adapt.patience=0",
            *extra,
        ],
        command="adapt",
    )


def _records(run):
    return [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_resumed_with_more_steps_goes_on_without_duplicate_records(tmp_path):
    torch.set_num_threads(1)
    run = adapt(_cfg(tmp_path, "ext", "adapt.max_steps=1"), verbose=False)
    assert [r["step"] for r in _records(run) if r["kind"] == "step"] == [0, 1]
    run = adapt(_cfg(tmp_path, "ext", "adapt.max_steps=2"), resume=True, verbose=False)
    recs = _records(run)
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1, 2]
    assert [r["step"] for r in recs if r["kind"] == "labels" and not r.get("probe")] == [1, 2]
    assert len([r for r in recs if r["kind"] == "final"]) == 1  # the first run's was cut back
    # every step's model scored once (step 1's by the first run's probe, step 2's by this one's)
    assert sorted(r["step"] for r in recs if r["kind"] == "select" and r["step"] > 0) == [1, 2]
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["adapt"]["max_steps"] == 2  # a later plain --resume keeps the new length
    assert "\n| 2 |" in (run.path / "report.md").read_text()


def test_a_resume_that_changes_anything_else_keeps_the_saved_steps(tmp_path):
    torch.set_num_threads(1)
    adapt(_cfg(tmp_path, "same", "adapt.max_steps=1"), verbose=False)
    run = adapt(
        _cfg(tmp_path, "same", "adapt.max_steps=2", "optim.lr=0.5"), resume=True, verbose=False
    )
    assert [r["step"] for r in _records(run) if r["kind"] == "step"] == [0, 1]
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["adapt"]["max_steps"] == 1 and saved["optim"]["lr"] != 0.5
