"""Score every kept step model of a selection run again, with rules the loop did not record.

    python benchmarks/selection_scores.py pku_msplr [more run names]

A run of ``selection_runs.py`` keeps every step's model (``runs/<name>/steps/step_<s>.pt``,
with the pseudo-labels it was trained on) and the held-back slice of its step-1 clusters (the
loop state of ``checkpoints/last.pt``). This script extracts the target training features of
the source model and of every step model once and computes the candidate rules on them,
written to ``runs/<name>/scores.json`` and copied to the committed records
(``benchmarks/results/selection_runs/<name>/scores.json``), which ``selection_runs.py
--table`` reads next to the loop's own ``select`` records. Takes the shared lock.

Rules (every one label-free; each is "higher is better"):

* ``holdout``: :func:`~adaptreid.evaluation.label_free.holdout_map` with the rest of the
  target as distractors (what the loop records since the distractors were added);
* ``holdout_plain``: the same among the held-back images only;
* ``cross_camera``: :func:`~adaptreid.evaluation.label_free.cross_camera_neighbors`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time

import numpy as np
import torch
import uda_runs as U
import yaml

from adaptreid.config import config_from_saved
from adaptreid.data.loaders import build_test_loader
from adaptreid.data.transforms import build_transforms
from adaptreid.engine.builders import load_dataset
from adaptreid.engine.extract import extract_features
from adaptreid.evaluation.label_free import cross_camera_neighbors, holdout_map
from adaptreid.rundir.checkpoint import load_checkpoint
from adaptreid.rundir.model_io import model_from_checkpoint

ROOT = U.ROOT
RECORDS = ROOT / "benchmarks" / "results" / "selection_runs"


def step_scores(feats, cams, held_rows, held_labels, seed: int) -> dict[str, float]:
    """Every rescored rule of one model's features (rows follow the target's training list)."""
    others = np.setdiff1d(np.arange(len(feats)), held_rows)
    f, h = feats, held_rows
    return {
        "holdout": holdout_map(f[h], held_labels, cams[h], f[others], seed=seed),
        "holdout_plain": holdout_map(f[h], held_labels, cams[h]),
        "cross_camera": cross_camera_neighbors(f, cams, seed=seed),
    }


def rescore(name: str) -> dict[str, dict[str, float]]:
    folder = ROOT / "runs" / name
    cfg = config_from_saved(yaml.safe_load((folder / "config.yaml").read_text()))
    target = load_dataset(cfg, "target")
    held = load_checkpoint(folder / "checkpoints" / "last.pt")["loop"]["holdout"]
    train = [x for x in target.train]
    rows = np.asarray([i for i, x in enumerate(train) if x.path in held], dtype=np.int64)
    labels = np.asarray([held[train[i].path] for i in rows])
    cams = np.asarray([x.camid for x in train])
    d = cfg.data
    loader = build_test_loader(
        train, build_transforms(d.height, d.width, train=False), d.test_batch_size, 0
    )
    models = {0: cfg.adapt.init_checkpoint}
    for p in sorted((folder / "steps").glob("step_*.pt")):
        models[int(p.stem.split("_")[1])] = str(p)
    out = {}
    for step, path in sorted(models.items()):
        model, _ = model_from_checkpoint(path)
        feats = extract_features(model, loader, desc=f"{name} step {step}", verbose=False)
        out[str(step)] = step_scores(feats.feats.numpy(), cams, rows, labels, cfg.seed)
        print(f"{name} step {step}: {out[str(step)]}", flush=True)
    (folder / "scores.json").write_text(json.dumps(out, indent=1) + "\n")
    (RECORDS / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "scores.json", RECORDS / name / "scores.json")
    return out


def main(names: list[str]) -> int:
    torch.set_num_threads(2)
    with open(U.LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            t0 = time.time()
            rescore(name)
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
