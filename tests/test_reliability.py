"""Crash safety, bad input and determinism of a real (tiny) adaptation run.

Kills use ``ADAPTREID_CRASH_AT`` (adaptreid/runtime/faults.py): the process SIGKILLs itself at a
named point, so each test kills at a known place instead of racing a timer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import adapt_args, write_identity_market

from adaptreid.cli import main
from adaptreid.errors import CheckpointError
from adaptreid.models import build_model
from adaptreid.rundir.checkpoint import load_checkpoint, save_checkpoint
from adaptreid.rundir.model_io import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tiny_adaptation):
    return tiny_adaptation


def _adapt_cmd(tmp, ckpt, tgt, name, *extra, resume=False):
    cmd = [
        sys.executable,
        "-m",
        "adaptreid",
        "adapt",
        "--config",
        "configs/msplr/base.yaml",
        "-q",
        *adapt_args(tmp, ckpt, tgt, name, *extra),
    ]
    return cmd + (["--resume"] if resume else [])


def _run(cmd, crash=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ADAPTREID_CRASH_AT", None)
    if crash:
        env["ADAPTREID_CRASH_AT"] = crash
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _steps(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "step"], [
        r for r in recs if r.get("kind") == "labels"
    ]


@pytest.fixture(scope="module")
def reference(setup):
    tmp, ckpt, tgt = setup
    res = _run(_adapt_cmd(tmp, ckpt, tgt, "ref"))
    assert res.returncode == 0, res.stderr[-2000:]
    return _steps(tmp / "runs" / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["cluster@2", "train_step@5", "checkpoint_write@3"])
def test_sigkill_then_resume_matches_uninterrupted_run(setup, reference, point):
    tmp, ckpt, tgt = setup
    name = "kill_" + point.replace("@", "_")
    killed = _run(_adapt_cmd(tmp, ckpt, tgt, name), crash=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt_dir = tmp / "runs" / name / "checkpoints"
    # whatever checkpoint exists is whole and loads (never half-written)
    load_checkpoint(ckpt_dir / "last.pt")
    if point.startswith("checkpoint_write"):
        assert list(ckpt_dir.glob(".*.tmp")), "the kill should have interrupted a write"
    resumed = _run(_adapt_cmd(tmp, ckpt, tgt, name, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(ckpt_dir.glob(".*.tmp"))
    steps, labels = _steps(tmp / "runs" / name)
    ref_steps, ref_labels = reference
    assert [s["step"] for s in steps] == [s["step"] for s in ref_steps]  # no duplicates
    # both runs on this machine with the same seed: resume must replay exactly
    for a, b in zip(steps, ref_steps):
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6)
        assert a["rank1"] == pytest.approx(b["rank1"], abs=1e-6)
    assert [r["num_clusters"] for r in labels] == [r["num_clusters"] for r in ref_labels]


@pytest.mark.slow
def test_same_seed_same_labels_and_metrics(setup, reference):
    tmp, ckpt, tgt = setup
    res = _run(_adapt_cmd(tmp, ckpt, tgt, "again"))
    assert res.returncode == 0, res.stderr[-2000:]
    a = load_checkpoint(tmp / "runs" / "again" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp / "runs" / "ref" / "checkpoints" / "last.pt")
    assert np.array_equal(a["loop"]["labels"].numpy(), b["loop"]["labels"].numpy())
    steps, _ = _steps(tmp / "runs" / "again")
    assert [s["mAP"] for s in steps] == [s["mAP"] for s in reference[0]]


def test_dbscan_without_cluster_suggests_eps_and_keeps_model(setup, capsys):
    tmp, ckpt, tgt = setup
    code = main(
        [
            "adapt",
            "--config",
            "configs/msplr/base.yaml",
            "-q",
            *adapt_args(tmp, ckpt, tgt, "nocluster", "pseudo.method=dbscan", "pseudo.eps=0.0001"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "try eps=" in err
    model, _ = model_from_checkpoint(tmp / "runs" / "nocluster" / "checkpoints" / "best.pt")
    assert model is not None  # the last good model (direct transfer) is kept


def test_single_camera_target_degrades_with_warning(setup, caplog):
    tmp, ckpt, tgt = setup
    one_cam = tmp / "onecam"
    train = [f"{pid:04d}_c1s1_{i:06d}_00.jpg" for pid in range(30, 38) for i in range(4)]
    from conftest import write_market

    write_market(
        one_cam,
        train=train,
        query=["0050_c1s1_000001_00.jpg"],
        gallery=["0050_c2s1_000002_00.jpg", "0051_c2s1_000003_00.jpg"],
    )
    with pytest.warns(UserWarning, match="camera"):
        code = main(
            [
                "adapt",
                "--config",
                "configs/msplr/base.yaml",
                "-q",
                *adapt_args(tmp, ckpt, one_cam, "onecam", "adapt.max_steps=1"),
            ]
        )
    assert code == 0


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    from adaptreid.losses import reid_loss

    data = write_identity_market(tmp_path / "m")
    calls = {"n": 0}
    original = reid_loss.ReidLoss.forward

    def poisoned(self, outputs, batch):
        loss, parts = original(self, outputs, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), parts

    monkeypatch.setattr(reid_loss.ReidLoss, "forward", poisoned)
    code = main(
        [
            "train",
            "--config",
            "configs/source/base.yaml",
            "-q",
            f"output_dir={tmp_path / 'runs'}",
            "name=nan",
            "data.source=market1501",
            f"data.source_root={data}",
            "data.height=32",
            "data.width=16",
            "data.batch_size=12",
            "data.num_workers=0",
            "model.backbone=resnet18",
            "train.epochs=3",
        ]
    )
    assert code == 2
    assert "loss became nan" in capsys.readouterr().err
    kept = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoints" / "last.pt")
    assert kept["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_nan_features_are_refused():
    from adaptreid.engine.extract import extract_features
    from adaptreid.errors import TrainingError

    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    loader = [{"img": torch.zeros(2, 3, 8, 4), "pid": torch.zeros(2), "camid": torch.zeros(2)}]
    with pytest.raises(TrainingError, match="NaN or inf"):
        extract_features(Bad(), loader, verbose=False)


def test_checkpoint_of_another_architecture_lists_keys(tmp_path):
    r18 = build_model("resnet18")
    r50 = build_model("resnet50")
    save_checkpoint({"arch": r18.arch, "model": r50.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(tmp_path / "x.pt")
    msg = str(e.value)
    assert "do not fit" in msg and "unexpected" in msg and "shape" in msg
    assert "layer1.0.conv3.weight" in msg or "conv3" in msg


def test_unknown_config_key_on_the_command_line(capsys):
    code = main(["train", "--config", "configs/source/base.yaml", "trian.epochs=1"])
    assert code == 2
    assert "Did you mean 'train'" in capsys.readouterr().err


def test_manifest_paths_outside_the_folder_need_explicit_permission(tmp_path, capsys):
    from conftest import write_jpeg

    outside = tmp_path / "elsewhere"
    for i in range(2):
        write_jpeg(outside / f"a{i}.jpg", color=i)
    root = tmp_path / "ds"
    root.mkdir()
    (root / "manifest.csv").write_text(
        f"path,pid,camid,split\n{outside / 'a0.jpg'},1,1,query\n../elsewhere/a1.jpg,1,2,gallery\n"
    )
    assert main(["data", "info", "--dataset", "manifest", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "leaves the manifest folder" in err and "--allow-absolute-paths" in err
    code = main(
        ["data", "info", "--dataset", "manifest", "--root", str(root), "--allow-absolute-paths"]
    )
    assert code == 0
    assert "query" in capsys.readouterr().out
