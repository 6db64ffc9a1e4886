import os
import pickle
import random

import numpy as np
import pytest
import torch

from adaptreid.errors import CheckpointError
from adaptreid.rundir.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip_with_rng_state(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "rng": rng_state(), "name": "x"}
    save_checkpoint(state, tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(6.0))
    # RNG state restores all three generators exactly
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_running_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"x": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_empty_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    save_checkpoint({"v": 1}, target)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint({"v": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_atomic_write_creates_parents(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b" / "f.bin", b"abc")
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == b"abc"


def _run_with_records(tmp_path, records):
    import json

    from adaptreid.rundir.run import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


RECORDS = [
    {"kind": "epoch", "epoch": 1},
    {"kind": "epoch", "epoch": 2},
    {"kind": "epoch", "epoch": 3},
    {"kind": "final", "stage": "source"},
]


def test_restore_cuts_records_back_and_restores_the_rng(tmp_path):
    run = _run_with_records(tmp_path, RECORDS)
    state = {"version": 2, "rng": rng_state(), "records": 2}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    run.restore(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert [r.get("epoch") for r in run.read_metrics()] == [1, 2]


def test_restore_of_older_checkpoints(tmp_path):
    # adaptation before the shared format: the count in the loop's state
    run = _run_with_records(tmp_path / "a", RECORDS)
    run.restore({"version": 2, "rng": rng_state(), "loop": {"records": 3}})
    assert len(run.read_metrics()) == 3
    # source training's version 1: no count; the epoch records up to its epoch, as then
    run = _run_with_records(tmp_path / "b", RECORDS)
    run.restore({"version": 1, "rng": rng_state(), "epoch": 2})
    assert run.read_metrics() == RECORDS[:2]
