"""``adaptreid demo``: source training -> direct transfer -> MSPLR -> table, on the built-in
synthetic data (its ``tiny`` size, so that the test takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO_TINY

from adaptreid.cli import main
from adaptreid.demo import DemoResult, demo_configs, format_demo_table, run_demo


def test_demo_end_to_end_and_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-q", *DEMO_TINY]) == 0
    printed = capsys.readouterr().out
    rows = ("source model, supervised", "direct transfer", "label-free pick", "oracle")
    for row in rows:
        assert row in printed
    assert "synthetic-target" in printed and "report.md" in printed

    summary = json.loads((out / "demo.json").read_text())
    assert summary["source_name"] == "synthetic-source"
    assert summary["target_name"] == "synthetic-target"
    assert 1 <= summary["num_steps"] <= 2
    for key in ("source_in_domain", "direct_transfer", "adapted", "oracle"):
        assert 0.0 <= summary[key]["mAP"] <= 1.0 and 0.0 <= summary[key]["rank1"] <= 1.0
    # the adapted row is the label-free pick's step (best.pt), the oracle row the best mAP
    records = [
        json.loads(line) for line in (out / "msplr" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = {r["step"]: r for r in records if r["kind"] == "step"}
    assert summary["rule"] == "agreement"
    assert summary["direct_transfer"]["mAP"] == pytest.approx(steps[0]["mAP"])
    assert summary["adapted"]["mAP"] == pytest.approx(steps[summary["best_step"]]["mAP"])
    assert summary["oracle"]["mAP"] == pytest.approx(max(s["mAP"] for s in steps.values()))
    final = next(r for r in records if r["kind"] == "final")  # best.pt evaluated at the end
    assert final["mAP"] == pytest.approx(summary["adapted"]["mAP"])
    # both runs are normal run folders with their reports and pictures
    for run in ("source", "msplr"):
        for name in ("report.md", "ranklist.png", "metrics.jsonl", "config.yaml"):
            assert (out / run / name).is_file(), f"{run}/{name}"
    assert (out / "msplr" / "steps.png").is_file()
    # the adapted model is the source checkpoint's (small_cnn), not its preset's model.backbone
    assert "backbone `small_cnn`" in (out / "msplr" / "report.md").read_text()
    assert "| direct transfer" in (out / "demo.md").read_text()
    # the synthetic domains were drawn inside the demo folder
    assert (out / "data" / "synthetic-source" / "spec.json").is_file()

    # running it again continues the finished runs instead of refusing or retraining
    before = (out / "msplr" / "metrics.jsonl").read_text()
    result = run_demo(out, overrides=DEMO_TINY, verbose=False)
    assert result.adapted["mAP"] == pytest.approx(summary["adapted"]["mAP"])
    assert (out / "msplr" / "metrics.jsonl").read_text().startswith(before.splitlines()[0])


def test_demo_data_folder_errors(tmp_path, capsys):
    (tmp_path / "market1501").mkdir()
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dukemtmc" in err and "missing" in err
    (tmp_path / "dukemtmc").mkdir()
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_demo_configs_real_pair(tmp_path):
    for name in ("market1501", "dukemtmc"):
        (tmp_path / "data" / name).mkdir(parents=True)
    w = tmp_path / "weights" / "mobilenet_v2_imagenet_features.pth"
    w.parent.mkdir()
    w.write_bytes(b"")
    src, ada = demo_configs(tmp_path / "out", tmp_path / "data")
    assert src.data.source == "market1501" and ada.data.target == "dukemtmc"
    assert Path(src.data.source_root) == tmp_path / "data" / "market1501"
    assert src.model.pretrained == str(w)
    assert ada.adapt.init_checkpoint == str(tmp_path / "out" / "source" / "checkpoints" / "best.pt")


def test_format_demo_table():
    r = DemoResult(
        "a",
        "b",
        {"rank1": 0.9, "mAP": 0.8},
        {"rank1": 0.3, "mAP": 0.175},
        {"rank1": 0.835, "mAP": 0.368},
        5,
        6,
        "agreement",
        {"rank1": 0.85, "mAP": 0.39},
        4,
        Path("s"),
        Path("m"),
        150.0,
    )
    text = format_demo_table(r)
    assert "|   30.0 |  17.5 |" in text and "|   83.5 |  36.8 |" in text
    lines = text.splitlines()
    picked = next(i for i, x in enumerate(lines) if "label-free pick: step 5 of 6" in x)
    oracle = next(i for i, x in enumerate(lines) if "oracle (test labels): step 4" in x)
    assert picked < oracle and "|   85.0 |  39.0 |" in lines[oracle]  # label-free first
    assert "+19.3 points" in text and "2.5 min" in text
