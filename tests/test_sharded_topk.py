"""The exact top-k sharded across torch.distributed ranks (2 gloo processes under torchrun)
equals the single-process top-k, ties and their order included, and so does the Jaccard
distance built on it."""

from pathlib import Path

import numpy as np
import pytest
from conftest import torchrun

from adaptreid.pseudo.kreciprocal import jaccard_distance
from adaptreid.pseudo.topk import topk_neighbors

WORKER = Path(__file__).with_name("ddp_topk_worker.py")


def test_distributed_true_without_process_group_is_an_error():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="process group"):
        topk_neighbors(x, 2, distributed=True)
    with pytest.raises(ValueError, match="process group"):
        jaccard_distance(x, 2, 1, distributed=True)
    # no process group: the defaults compute it all here
    d, i = topk_neighbors(x, 2, distributed=None)
    assert i.shape == (5, 2) and (d == 0).all()
    assert jaccard_distance(x, 2, 1).shape == (5, 5)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    proc = torchrun(WORKER, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = np.load(tmp_path / "topk_rank0.npz")
    r1 = np.load(tmp_path / "topk_rank1.npz")
    assert int(r0["world"]) == int(r1["world"]) == 2
    for bs in (32, 64):
        for kind in ("sq", "qg"):
            for r in (r0, r1):
                # sharded == single process, exactly (distances and tie order)
                np.testing.assert_array_equal(r[f"{kind}_i{bs}"], r[f"{kind}_i1_{bs}"])
                np.testing.assert_array_equal(r[f"{kind}_d{bs}"], r[f"{kind}_d1_{bs}"])
            np.testing.assert_array_equal(r0[f"{kind}_i{bs}"], r1[f"{kind}_i{bs}"])
        # the features have exact ties at the k-th place: the test exercises the tie order
        d = r0[f"sq_d{bs}"]
        assert (d[:, 1:] == d[:, :-1]).any()
    for r in (r0, r1):
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(r[f"jac_{part}"], r[f"jac1_{part}"])
    np.testing.assert_array_equal(r0["jac_data"], r1["jac_data"])
