"""Worker for tests/test_cluster_contrast.py: cluster contrast under torchrun (gloo); records,
after every memory update on this rank, a hash of the memory and the batch sizes seen."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from adaptreid.config import load_config
from adaptreid.engine.loop import adapt
from adaptreid.methods import cluster_contrast as CC
from adaptreid.runtime import distributed as D

seen = {"memory": [], "batch": [], "local_batch": []}
_update = CC.ClusterMemoryLoss.update
_gather = D.all_gather_cat  # the module the memory losses gather with


def _recording_gather(t):
    out = _gather(t)
    if t.dim() == 2:
        seen["local_batch"].append(int(t.shape[0]))
        seen["batch"].append(int(out.shape[0]))
    return out


def _recording_update(self, outputs, batch):
    _update(self, outputs, batch)
    seen["memory"].append(hashlib.sha1(self.memory.numpy().tobytes()).hexdigest())


CC.ClusterMemoryLoss.update = _recording_update
D.all_gather_cat = _recording_gather


def main(out: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config("cluster_contrast/base.yaml", overrides, command="adapt")
    adapt(cfg, verbose=False)
    seen["rank"], seen["world"] = D.rank(), D.world_size()
    Path(out, f"cc_rank{D.rank()}.json").write_text(json.dumps(seen))
    D.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
