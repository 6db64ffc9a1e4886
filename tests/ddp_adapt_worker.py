"""Worker for tests/test_distributed.py: runs MSPLR (``adapt``) on the tiny synthetic
target, alone or under torchrun (gloo), counting on each rank how often it clustered and which
pseudo-labels it trained on; writes OUT/adapt_rank<r>_w<world>.json."""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import adaptreid.engine.pseudo_step as P
import adaptreid.methods.msplr as M
from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.runtime import distributed as D

seen = {"cluster_calls": 0, "auto_eps_calls": 0, "labels": []}
_make, _auto, _samples = P.make_pseudo_labels, P.auto_eps, M.pseudo_samples


def _count_make(*a, **k):
    seen["cluster_calls"] += 1
    return _make(*a, **k)


def _count_auto(*a, **k):
    seen["auto_eps_calls"] += 1
    return _auto(*a, **k)


def _record(train, labels):
    seen["labels"].append(
        hashlib.sha1(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()
    )
    return _samples(train, labels)


P.make_pseudo_labels, P.auto_eps, M.pseudo_samples = _count_make, _count_auto, _record


def main(ckpt: str, target_root: str, out: str) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(
        "demo/msplr.yaml",
        [
            f"output_dir={out}",
            f"name=adapt_w{world}",
            f"adapt.init_checkpoint={ckpt}",
            f"data.target_root={target_root}",
            "data.target_options.preset=tiny",
            "data.num_workers=0",
            "device=cpu",
            "data.batch_size=8",
            "data.num_instances=2",
            "adapt.max_steps=2",
            "adapt.patience=0",
            "adapt.epochs_per_step=1",
            "train.freeze_epochs=0",
            "optim.warmup_epochs=0",
        ],
    )
    adapt(cfg, verbose=False)
    seen["rank"], seen["world"] = D.rank(), D.world_size()
    Path(out, f"adapt_rank{D.rank()}_w{seen['world']}.json").write_text(json.dumps(seen))
    D.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:4])
