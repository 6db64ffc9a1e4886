"""MSPLR end to end on tiny synthetic folders: source training, adaptation through the CLI,
resume in the middle of a step, and the eps sweep of ``adaptreid cluster``."""

import json

import numpy as np
import torch
from conftest import adapt_args, train_tiny_source, write_identity_market

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.rundir.checkpoint import load_checkpoint


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_adapt_cli_runs_steps_writes_report_and_resumes(tmp_path):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    code = main(
        [
            "adapt",
            "--config",
            "configs/msplr/base.yaml",
            "-q",
            *adapt_args(tmp_path, ckpt, tgt, "full"),
        ]
    )
    assert code == 0
    run = tmp_path / "runs" / "full"
    recs = _records(run)
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert steps[0]["stage"] == "direct_transfer"
    labels = [r for r in recs if r["kind"] == "labels"]
    # one round per step, and one more (a probe) that scores the last model label-free
    assert [(r["step"], r.get("probe", False)) for r in labels] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert [r["step"] for r in recs if r["kind"] == "select"] == [0, 1, 2]
    for r in labels:  # consistent statistics (the selected clusters hold the kept images)
        assert r["portion_kept"] == (r["num_images"] - r["num_outliers"]) / r["num_images"]
    assert all("quality_f1" in r for r in labels)  # target ids known: analysis only
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [(r["step"], r["epoch"]) for r in epochs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [r["body_frozen"] for r in epochs] == [1.0, 0.0, 1.0, 0.0]
    for name in ("report.md", "steps.png", "loss.png", "ranklist.png"):
        assert (run / name).is_file(), name
    assert "Adaptation steps" in (run / "report.md").read_text()
    final = load_checkpoint(run / "checkpoints" / "last.pt")

    # the same run, stopped after the first epoch of step 2, then resumed
    cfg = load_config(
        "configs/msplr/base.yaml", adapt_args(tmp_path, ckpt, tgt, "cut"), command="adapt"
    )
    cfg.adapt.max_steps = 2
    cut = tmp_path / "runs" / "cut"

    class Stop(Exception):
        pass

    from adaptreid.engine import trainer as trainer_mod

    original = trainer_mod.Trainer.train_epoch

    def stop_in_step_two(self, epoch):
        if self.desc == "step 2" and epoch == 2:
            raise Stop
        return original(self, epoch)

    trainer_mod.Trainer.train_epoch = stop_in_step_two
    try:
        adapt(cfg, verbose=False)
    except Stop:
        pass
    finally:
        trainer_mod.Trainer.train_epoch = original
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["loop"]["step"] == 2
    adapt(cfg, resume=True, verbose=False)
    resumed = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert np.array_equal(resumed["loop"]["labels"].numpy(), final["loop"]["labels"].numpy())
    # a replay on the same machine in the same process: equal up to float noise (a property
    # of resume, not a training outcome; both runs take exactly the same steps)
    for k, v in final["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-5), k
    cut_epochs = [(r["step"], r["epoch"]) for r in _records(cut) if r["kind"] == "epoch"]
    assert cut_epochs == [(1, 1), (1, 2), (2, 1), (2, 2)]  # no duplicate after the resume


def test_cluster_command_prints_sweep_and_recommendation(tmp_path, capsys):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(tmp_path / "tgt", ids=tuple(range(30, 38)), seed=5)
    capsys.readouterr()
    code = main(
        [
            "cluster",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "market1501",
            "--root",
            str(tgt),
            "--eps-sweep",
            "0.2:1.0:0.2",
            "--num-workers",
            "0",
            "-q",
            "--out",
            str(tmp_path / "sweep"),
            "pseudo.min_size=2",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "recommended eps:" in out and "F1" in out
    saved = json.loads((tmp_path / "sweep" / "eps_sweep.json").read_text())
    assert [round(r["eps"], 3) for r in saved["rows"]] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert saved["recommended"] in [r["eps"] for r in saved["rows"]]


def test_auto_eps_picks_eps_per_step_without_labels(tmp_path):
    torch.set_num_threads(1)
    ckpt = train_tiny_source(tmp_path)
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    code = main(
        [
            "adapt",
            "--config",
            "configs/msplr/base.yaml",
            "-q",
            *adapt_args(
                tmp_path,
                ckpt,
                tgt,
                "auto",
                "pseudo.method=dbscan",
                "pseudo.auto_eps=true",
                "pseudo.eps=0.0001",
                "adapt.max_steps=1",
            ),
        ]
    )
    # eps=0.0001 alone finds no cluster (the run would stop); the label-free sweep replaced
    # it by one of its candidates, quantiles of distances between distinct images (> 0)
    assert code == 0
    labels = [r for r in _records(tmp_path / "runs" / "auto") if r["kind"] == "labels"]
    assert labels[0]["eps"] > 0.0001
