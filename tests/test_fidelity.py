"""Readings of the papers that are switches (issue 13): MSPLR's per-step schedule, PAST's
S_min, PAST Table 2's k-means row, train.keep, keys a command ignores, missing weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import COMMON, adapt_args, past_args, train_tiny_source, write_identity_market

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.errors import ConfigError
from adaptreid.pseudo.settings import hdbscan_sizes
from adaptreid.rundir.checkpoint import load_checkpoint


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source_and_target(tiny_adaptation):
    return tiny_adaptation


def test_msplr_paper_schedule_freezes_before_the_whole_schedule(source_and_target):
    """method.freeze=before_schedule (MSPLR section 3.6.2 as written): train.freeze_epochs
    head-only epochs at the constant base lr, then adapt.epochs_per_step epochs of the eq. 6
    schedule from its first warm-up epoch; inside_schedule spends the warm-up frozen."""
    tmp, ckpt, tgt = source_and_target
    extra = [
        "adapt.max_steps=1",
        "adapt.epochs_per_step=3",
        "train.freeze_epochs=2",
        "optim.warmup_epochs=2",
        "optim.milestones=[50]",
    ]
    paper = load_config(
        "configs/msplr/base.yaml",
        [*adapt_args(tmp, ckpt, tgt, "paper", *extra), "method.freeze=before_schedule"],
        command="adapt",
    )
    epochs = [r for r in _records(adapt(paper, verbose=False).path) if r["kind"] == "epoch"]
    assert [(r["stage"], r["epoch"], r["body_frozen"]) for r in epochs] == [
        ("frozen", 1, 1.0),
        ("frozen", 2, 1.0),
        ("finetune", 1, 0.0),
        ("finetune", 2, 0.0),
        ("finetune", 3, 0.0),
    ]
    lr = 3.5e-4
    paper_lrs = [r["lr"] for r in epochs]  # lr is logged before the scheduler steps
    assert paper_lrs[:2] == pytest.approx([lr, lr])  # frozen: constant base lr
    inside = load_config(
        "configs/msplr/base.yaml",
        [*adapt_args(tmp, ckpt, tgt, "inside", *extra), "method.freeze=inside_schedule"],
        command="adapt",
    )
    epochs = [r for r in _records(adapt(inside, verbose=False).path) if r["kind"] == "epoch"]
    assert [(r["stage"], r["body_frozen"]) for r in epochs] == [
        ("finetune", 1.0),
        ("finetune", 1.0),
        ("finetune", 0.0),
    ]
    schedule = [r["lr"] for r in epochs]
    assert schedule[0] == pytest.approx(0.1 * lr)  # the warm-up's first epoch
    # the paper's reading runs the whole schedule, warm-up included, after the frozen epochs
    assert paper_lrs[2:] == pytest.approx(schedule)


def test_s_min_readings():
    cfg = load_config("configs/past/base.yaml")
    assert cfg.pseudo.s_min == 10 and cfg.pseudo.s_min_reading == "min_cluster_size"
    assert hdbscan_sizes(cfg.pseudo) == (10, None)  # min_samples defaults to the same value
    cfg.pseudo.s_min_reading = "released_code"
    # the hdbscan package does not count a point in its own neighbourhood, scikit-learn does
    assert hdbscan_sizes(cfg.pseudo) == (5, 11)
    cfg.pseudo.s_min_reading = "neither"
    with pytest.raises(ConfigError, match="s_min_reading"):
        hdbscan_sizes(cfg.pseudo)


def test_past_table2_kmeans_row_runs(source_and_target):
    """k-means clusters the features even though PAST's distance is the Jaccard one; the
    ranking for RTL still comes from the Jaccard distance."""
    tmp, ckpt, tgt = source_and_target
    args = past_args(tmp, ckpt, tgt, "km", "pseudo.method=kmeans", "pseudo.kmeans_k=8")
    cfg = load_config("configs/past/base.yaml", [*args, "adapt.max_steps=1"], command="adapt")
    run = adapt(cfg, verbose=False)
    labels = [r for r in _records(run.path) if r["kind"] == "labels" and not r.get("probe")]
    assert labels[0]["num_clusters"] == 8 and labels[0]["k"] == 8
    assert load_checkpoint(run.last)["loop"]["extra"]["ranked"].shape == (32, 6)


def test_train_keep_last_or_best(tmp_path):
    torch.set_num_threads(1)
    src = write_identity_market(tmp_path / "src", ids=tuple(range(1, 9)))
    base = [
        "train",
        "--config",
        "configs/source/base.yaml",
        "-q",
        f"output_dir={tmp_path / 'runs'}",
        "data.source=market1501",
        f"data.source_root={src}",
        "train.epochs=3",
        "train.eval_every=1",
        "model.backbone=resnet18",
        *COMMON,
    ]
    for keep in ("last", "best"):
        assert main([*base, f"name={keep}", f"train.keep={keep}"]) == 0
        recs = _records(tmp_path / "runs" / keep)
        maps = {r["epoch"]: r["source_mAP"] for r in recs if "source_mAP" in r}
        best = load_checkpoint(tmp_path / "runs" / keep / "checkpoints" / "best.pt")
        want = 3 if keep == "last" else max(maps, key=lambda e: (maps[e], -e))
        assert best["epoch"] == want, (keep, maps)
    with pytest.raises(ConfigError, match="train.keep"):
        from adaptreid.engine.supervised import train_source

        train_source(load_config(None, [*base[5:], "name=x", "train.keep=median"]))


def test_commands_refuse_keys_they_ignore(capsys):
    adapt_cmd = ["adapt", "--config", "configs/msplr/market1501_to_dukemtmc.yaml"]
    assert main([*adapt_cmd, "model.backbone=resnet50"]) == 2
    err = capsys.readouterr().err
    assert "model.backbone" in err and "adapt.init_checkpoint" in err
    assert main(["adapt", "--config", "configs/past/base.yaml", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: past does not read it" in err and "method.lr_" in err
    assert main(["train", "--config", "configs/source/base.yaml", "pseudo.eps=0.5"]) == 2
    assert "pseudo.eps" in capsys.readouterr().err
    # a key of another method is unknown to this one, with the closest valid key
    assert main(["adapt", "--config", "configs/msplr/base.yaml", "method.eta=3"]) == 2
    assert "method.eta" in capsys.readouterr().err


def test_paper_presets_name_their_weights_and_fail_clearly_without_them(tmp_path, capsys):
    for preset in ("source/market1501_ibn.yaml", "source/market1501_pcb.yaml"):
        cfg = load_config(preset)
        assert cfg.model.pretrained  # never a silent random initialisation
    src = write_identity_market(tmp_path / "src", ids=tuple(range(1, 5)))
    code = main(
        [
            "train",
            "--config",
            "configs/source/market1501_ibn.yaml",
            f"output_dir={tmp_path}",
            f"data.source_root={src}",
            "data.target=",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model.pretrained" in err and "resnet50_ibn_a-d9d0bb7b.pth" in err


def test_unknown_cameras_switch_camera_rules_off(tmp_path, caplog):
    """A target without camera ids (a manifest without a camid column) adapts with camera
    normalisation and the >= 2-camera rule off, and says so."""
    from PIL import Image

    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    root = tmp_path / "cams"
    rows = ["path,pid,split"]
    rng = np.random.default_rng(0)
    for pid in range(8):
        for i in range(4):
            arr = np.clip((pid * 30 + rng.normal(0, 15, (32, 16, 3))), 0, 255).astype(np.uint8)
            rel = f"img/{pid}_{i}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / rel)
            rows.append(f"{rel},,train")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    args = adapt_args(tmp_path, ckpt, root, "nocam", "data.target=manifest", "adapt.max_steps=1")
    cfg = load_config("configs/msplr/base.yaml", args, command="adapt")
    with caplog.at_level("WARNING"):
        run = adapt(cfg, verbose=False)
    assert "camera ids are unknown" in caplog.text
    labels = [r for r in _records(run.path) if r["kind"] == "labels"]
    assert labels[0]["num_clusters"] > 0  # the camera rule would have dropped them all
