"""Adaptation with no source model (issue 26 item 3): ``adapt.init_checkpoint`` empty, the
network built from ``model.*``. Its run says so wherever a source run says "direct transfer"."""

from __future__ import annotations

import torch
from conftest import DEMO_TINY_ADAPT

from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.rundir.run import start_name


def test_start_name_says_what_step_zero_is():
    assert start_name("runs/src/checkpoints/best.pt", "w/imagenet.pth") == "direct transfer"
    assert start_name("", "../shared/weights/mobilenet_v2_imagenet_features.pth") == (
        "no source model: the pretrained weights of mobilenet_v2_imagenet_features.pth"
    )
    assert start_name("", None) == start_name(None) == "no source model: random initial weights"


def test_a_run_without_a_source_model_never_calls_step_zero_a_direct_transfer(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(
        "demo/msplr.yaml",
        [
            f"output_dir={tmp_path}",
            "name=unsup",
            f"data.target_root={tmp_path / 'data-tgt'}",
            *DEMO_TINY_ADAPT,
            "model.backbone=small_cnn",
            "model.last_stride=2",
            "adapt.init_checkpoint=",
            "adapt.max_steps=1",
            "adapt.patience=0",
        ],
        command="adapt",
    )
    assert cfg.adapt.init_checkpoint == "" and cfg.model.pretrained is None
    run = adapt(cfg, verbose=False)
    report = (run.path / "report.md").read_text()
    start = "no source model: random initial weights"
    assert f"| {start} (step 0) |" in report
    assert f"Step 0 is the starting model ({start})." in report
    assert "direct transfer" not in report
    log = (run.path / "log.txt").read_text()
    assert f"step 0 ({start}):" in log and "step 0 (direct transfer)" not in log


def test_a_source_run_report_still_names_its_direct_transfer(tmp_path):
    """A source run's config has an empty ``adapt.init_checkpoint`` too: its report keeps
    "direct transfer" for its evaluation on the other dataset."""
    from conftest import DEMO_TINY

    from adaptreid.engine.supervised import train_source

    torch.set_num_threads(1)
    roots = [
        f"data.source_root={tmp_path / 'data-src'}",
        f"data.target_root={tmp_path / 'data-tgt'}",
    ]
    cfg = load_config(
        "demo/source.yaml", [f"output_dir={tmp_path}", "name=src", *roots, *DEMO_TINY]
    )
    assert cfg.adapt.init_checkpoint == ""
    run = train_source(cfg, verbose=False)
    report = (run.path / "report.md").read_text()
    assert "| direct transfer (step 0) |" in report and "no source model" not in report


def test_start_of_reads_a_run_folders_config():
    from adaptreid.rundir.run import start_of

    assert start_of({"adapt": {"init_checkpoint": "src.pt"}}) == "direct transfer"
    assert start_of({"adapt": {}}) == start_of({}) == "direct transfer"  # no key: not claimed
    assert start_of({"adapt": {"init_checkpoint": ""}, "model": {"pretrained": "a/w.pth"}}) == (
        "no source model: the pretrained weights of w.pth"
    )
