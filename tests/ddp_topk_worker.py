"""Worker for tests/test_sharded_topk.py: under torchrun (gloo) every rank computes the sharded
exact top-k, the sharded Jaccard distance and, in the same process, the single-process
versions (``distributed=False``, the same thread count), then writes OUT/topk_rank<r>.npz."""

import sys
from pathlib import Path

import numpy as np
import torch

from adaptreid.pseudo.kreciprocal import jaccard_distance
from adaptreid.pseudo.topk import topk_neighbors
from adaptreid.runtime import distributed as D


def features(n=300, d=6, seed=0):
    """Small integers around cluster centres with exact duplicates: many exact ties."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-4, 5, size=(12, d))
    x = centres[rng.integers(0, 12, n)] + rng.integers(-1, 2, size=(n, d))
    x[rng.integers(0, n, 10)] = x[rng.integers(0, n, 10)]
    return x.astype(np.float32)


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, world, _ = D.init("cpu")
    x = features()
    y = features(n=170, seed=1)
    res = {"world": np.array(world)}
    for bs in (32, 64):
        d, i = topk_neighbors(x, 15, block_size=bs, distributed=True)
        da, ia = topk_neighbors(x, 15, block_size=bs, distributed=None)  # auto: sharded too
        assert np.array_equal(d, da) and np.array_equal(i, ia)
        d1, i1 = topk_neighbors(x, 15, block_size=bs, distributed=False)
        res[f"sq_d{bs}"], res[f"sq_i{bs}"], res[f"sq_d1_{bs}"], res[f"sq_i1_{bs}"] = d, i, d1, i1
        d, i = topk_neighbors(x, 9, y=y, block_size=bs, distributed=True)
        d1, i1 = topk_neighbors(x, 9, y=y, block_size=bs, distributed=False)
        res[f"qg_d{bs}"], res[f"qg_i{bs}"], res[f"qg_d1_{bs}"], res[f"qg_i1_{bs}"] = d, i, d1, i1
    jac = jaccard_distance(x, 8, 3, block_size=48)  # the default shards (world size 2)
    jac1 = jaccard_distance(x, 8, 3, block_size=48, distributed=False)
    for name, m in (("jac", jac), ("jac1", jac1)):
        res[f"{name}_data"], res[f"{name}_indices"] = m.data, m.indices
        res[f"{name}_indptr"] = m.indptr
    np.savez(Path(out) / f"topk_rank{rank}.npz", **res)
    D.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
