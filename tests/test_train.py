"""The source-training recipe end to end on a tiny synthetic Market-style folder."""

import json

import numpy as np
import pytest
import torch
from conftest import write_identity_market

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.engine.supervised import train_source
from adaptreid.errors import ConfigError
from adaptreid.rundir.checkpoint import load_checkpoint, save_checkpoint
from adaptreid.rundir.run import RunDir


def _epochs(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "epoch"]


def _cfg(tmp_path, *extra):
    data = write_identity_market(tmp_path / "market")
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'runs'}",
            "name=t",
            "data.source=market1501",
            f"data.source_root={data}",
            "data.height=32",
            "data.width=16",
            "data.batch_size=12",
            "data.num_instances=4",
            "data.num_workers=0",
            "data.color_change=true",
            "model.backbone=resnet18",
            "model.pretrained=null",
            "optim.warmup_epochs=2",
            "optim.milestones=[3]",
            "train.epochs=3",
            "train.eval_every=2",
            *extra,
        ],
    )


def test_train_writes_run_folder_and_resume_matches(tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(tmp_path)
    run = train_source(cfg, verbose=False)
    records = _epochs(run.path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert "source_mAP" in records[1] and "source_mAP" in records[2]
    for name in ("config.yaml", "log.txt", "report.md", "loss.png", "ranklist.png"):
        assert (run.path / name).is_file(), name
    full = load_checkpoint(run.last)
    assert full["epoch"] == 3 and load_checkpoint(run.best)["epoch"] in (2, 3)
    # the precision the run used is recorded and named in the report
    rec = [r for r in RunDir(run.path).read_metrics() if r.get("kind") == "precision"]
    assert len(rec) == 1 and rec[0]["train"]["amp"] in ("none", "bf16")
    report = (run.path / "report.md").read_text()
    assert "- precision: training " in report and "- precision: extraction" in report

    # a second run killed after epoch 1 (simulated: train 1 epoch), then resumed to 3
    cfg2 = _cfg(tmp_path, "name=t2", "train.epochs=1")
    run2 = train_source(cfg2, verbose=False)
    # a resumed run takes its config from the folder; extend it to 3 epochs there
    text = (run2.path / "config.yaml").read_text().replace("epochs: 1\n", "epochs: 3\n")
    (run2.path / "config.yaml").write_text(text)
    train_source(_cfg(tmp_path, "name=t2"), resume=True, verbose=False)
    resumed = load_checkpoint(run2.last)
    assert resumed["epoch"] == 3
    # Both runs are made here, on this machine, from the same seed: the resumed run replays
    # the same float operations (sampling and augmentation depend only on seed and epoch),
    # so it ends where the uninterrupted one does, on any CPU. The 1e-5 is not a statistical
    # tolerance on a training outcome; it only spares the check the last bits of float32.
    for k, v in full["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-5), k
    records2 = _epochs(run2.path)
    assert [r["epoch"] for r in records2] == [1, 2, 3]
    kinds = [r.get("kind") for r in RunDir(run2.path).read_metrics()]
    # the resume on the same machine made the same choice, so it adds no second record (a
    # killed and resumed run keeps the records of an uninterrupted one; test_kill_soak)
    assert kinds.count("precision") == 1
    assert records2[-1]["loss"] == pytest.approx(records[-1]["loss"], rel=1e-5)

    # a run folder whose checkpoint is in the old source-training format (version 1: no
    # record count) still resumes, to the same model
    run3 = train_source(_cfg(tmp_path, "name=t3", "train.epochs=1"), verbose=False)
    old = load_checkpoint(run3.last)
    assert old["version"] == 2 and old["records"] == 2  # the precision record, epoch 1
    del old["records"]
    save_checkpoint({**old, "version": 1}, run3.last)
    text = (run3.path / "config.yaml").read_text().replace("epochs: 1\n", "epochs: 3\n")
    (run3.path / "config.yaml").write_text(text)
    train_source(_cfg(tmp_path, "name=t3"), resume=True, verbose=False)
    for k, v in full["model"].items():
        assert torch.allclose(v.float(), load_checkpoint(run3.last)["model"][k].float(), atol=1e-5)
    assert [r["epoch"] for r in _epochs(run3.path)] == [1, 2, 3]


def test_new_run_refuses_to_overwrite(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=1")
    train_source(cfg, verbose=False)
    with pytest.raises(ConfigError, match="--resume"):
        train_source(cfg, verbose=False)


def test_cli_train_then_evaluate_checkpoint(tmp_path, capsys):
    data = write_identity_market(tmp_path / "m")
    args = [
        "train",
        "--config",
        "configs/source/base.yaml",
        "-q",
        f"output_dir={tmp_path / 'runs'}",
        "name=cli",
        "data.source=market1501",
        f"data.source_root={data}",
        "data.height=32",
        "data.width=16",
        "data.batch_size=12",
        "data.num_workers=0",
        "model.backbone=resnet18",
        "train.epochs=1",
    ]
    assert main(args) == 0
    ckpt = tmp_path / "runs" / "cli" / "checkpoints" / "best.pt"
    assert ckpt.is_file()
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "market1501",
            "--root",
            str(data),
            "--num-workers",
            "0",
            "-q",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # a range, not a value: a one-epoch model's mAP depends on the CPU's float paths
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert metrics["num_queries"] == 3  # every query of the test split was evaluated
    lo, hi = metrics["mAP_interval_90"]
    assert lo <= metrics["mAP"] <= hi and "90% interval" in printed
    aps = [a for a in metrics["per_query"]["ap"] if a is not None]
    assert len(metrics["per_query"]["pid"]) == 3 and np.mean(aps) == pytest.approx(
        metrics["mAP"], abs=1e-4
    )
    # the same model against its own saved evaluation: a difference of 0, within noise
    ev = ["evaluate", "--checkpoint", str(ckpt), "--dataset", "market1501", "--root", str(data)]
    ev += ["--num-workers", "0", "-q"]
    assert main([*ev, "--compare", str(out)]) == 0
    assert "mAP minus" in (line := capsys.readouterr().out) and ": +0.00, 90% interval" in line
    assert "cannot tell the two models apart" in line
    # a folder without a saved evaluation, or another query list: clear errors
    assert main([*ev, "--compare", str(tmp_path)]) == 2
    assert "no metrics.json there" in capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    saved["per_query"]["pid"] = saved["per_query"]["pid"][:2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text(json.dumps(saved))
    assert main([*ev, "--compare", str(tmp_path / "other")]) == 2
    assert "its 2 queries are not this evaluation's 3" in capsys.readouterr().err


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here; this checks the message when it is not")
    cfg = _cfg(tmp_path, "train.tensorboard=true", "train.epochs=1")
    with pytest.raises(ConfigError, match="tensorboard package"):
        train_source(cfg, verbose=False)
