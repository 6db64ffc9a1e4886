"""Bad images met by a long adaptation run: with ``data.bad_images`` auto (skip for the
target of ``adapt``) the run drops each unreadable image once, goes on, lists them in
bad_images.json and report.md, and a resume leaves them out again; with ``error`` it stops
with a message naming the file."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import torch
from conftest import adapt_args, corrupt_jpeg, noise_jpeg, train_tiny_source, write_identity_market

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.engine import trainer as trainer_mod
from adaptreid.engine.loop import adapt
from adaptreid.rundir.checkpoint import load_checkpoint

#: corrupt, truncated, zero-byte and non-image files placed among the target's images
BAD = {
    "bounding_box_train/0031_c1s1_000009_00.jpg": corrupt_jpeg(),
    "bounding_box_train/0033_c2s1_000009_00.jpg": noise_jpeg(2)[:300],
    "bounding_box_train/0035_c1s1_000009_00.jpg": b"",
    "bounding_box_test/0050_c2s1_000009_00.jpg": b"not an image\n",
}


def _target(tmp_path):
    tgt = write_identity_market(
        tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    for name, data in BAD.items():
        (tgt / name).write_bytes(data)
    return tgt


def test_adapt_skips_bad_images_once_reports_them_and_resumes(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    ckpt, tgt = train_tiny_source(tmp_path), _target(tmp_path)
    args = adapt_args(tmp_path, ckpt, tgt, "bad")
    assert main(["adapt", "--config", "configs/msplr/base.yaml", "-q", *args]) == 0
    run = tmp_path / "runs" / "bad"
    log = json.loads((run / "bad_images.json").read_text())
    listed = {e["path"]: e for e in log["images"]}
    assert set(listed) == {str(tgt / name) for name in BAD}  # each once
    assert all(e["reason"] for e in listed.values())
    assert "Unreadable images" in (run / "report.md").read_text()
    # the labels cover the readable training images; the bad ones are out of every step
    state = load_checkpoint(run / "checkpoints" / "last.pt")["loop"]
    assert len(state["labels"]) == 32  # 35 training images, 3 of them unreadable
    assert sorted(state["excluded"]) == sorted(str(tgt / n) for n in BAD if "train" in n)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1, 2]
    assert all(r.get("bad_gallery_images") == 1 for r in recs if r["kind"] == "step")

    # killed inside step 2 and resumed: the excluded images stay out, the labels still fit
    cfg = load_config("configs/msplr/base.yaml", adapt_args(tmp_path, ckpt, tgt, "cut"))

    class Stop(Exception):
        pass

    original = trainer_mod.Trainer.train_epoch

    def stop(self, epoch):
        if self.desc == "step 2" and epoch == 2:
            raise Stop
        return original(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", stop)
    with contextlib.suppress(Stop):
        adapt(cfg, verbose=False)
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", original)
    adapt(cfg, resume=True, verbose=False)
    cut = load_checkpoint(tmp_path / "runs" / "cut" / "checkpoints" / "last.pt")["loop"]
    assert np.array_equal(cut["labels"].numpy(), state["labels"].numpy())
    cut_log = json.loads((tmp_path / "runs" / "cut" / "bad_images.json").read_text())
    assert len(cut_log["images"]) == len(BAD)


def test_bad_images_error_mode_names_the_file(tmp_path, capsys):
    torch.set_num_threads(1)
    ckpt, tgt = train_tiny_source(tmp_path), _target(tmp_path)
    args = adapt_args(tmp_path, ckpt, tgt, "strict", "data.bad_images=error")
    assert main(["adapt", "--config", "configs/msplr/base.yaml", "-q", *args]) == 2
    err = capsys.readouterr().err
    assert "0050_c2s1_000009_00.jpg" in err or "0031_c1s1_000009_00.jpg" in err
