"""PK sampler (batch structure, determinism, sharding, replacement) and the loaders."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from adaptreid.data import (
    Augmentation,
    PKSampler,
    PKSampling,
    build_dataset,
    build_test_loader,
    build_train_loader,
    build_transforms,
)
from adaptreid.data.sampler import max_pk_batches
from adaptreid.errors import DatasetError

# 20 identities with 1..12 images each, interleaved in the index order
SIZES = [1 + (i * 7) % 12 for i in range(20)]
PIDS = np.concatenate([np.full(n, 100 + i) for i, n in enumerate(SIZES)])
PIDS = PIDS[np.random.default_rng(0).permutation(len(PIDS))].tolist()


def _batches(sampler: PKSampler) -> list[list[int]]:
    idx = list(sampler)
    assert len(idx) == len(sampler)
    n = sampler.batch_size
    return [idx[i : i + n] for i in range(0, len(idx), n)]


def test_batches_have_p_distinct_identities_times_k():
    p, k = 4, 3
    s = PKSampler(PIDS, p, k, seed=1)
    chunks = sum(max(1, n // k) for n in SIZES)
    assert s.num_batches == chunks // p == len(_batches(s))
    for batch in _batches(s):
        counts = Counter(PIDS[i] for i in batch)
        assert len(counts) == p and set(counts.values()) == {k}
        # each identity's K images are consecutive
        assert all(len({PIDS[i] for i in batch[j : j + k]}) == 1 for j in range(0, p * k, k))


def test_no_image_repeats_unless_identity_is_small():
    s = PKSampler(PIDS, 4, 3, seed=2)
    for batch in _batches(s):
        per_id = Counter(PIDS[i] for i in batch)
        for pid in per_id:
            idx = [i for i in batch if PIDS[i] == pid]
            n_images = PIDS.count(pid)
            if n_images >= 3:
                assert len(set(idx)) == 3
            else:  # drawn with replacement from its few images
                assert set(idx) <= {i for i, q in enumerate(PIDS) if q == pid}


def test_replacement_for_small_identities():
    pids = [0] * 1 + [1] * 2 + [2] * 8 + [3] * 8
    s = PKSampler(pids, 2, 4, seed=0)
    seen = [i for b in _batches(s) for i in b if pids[i] == 0]
    assert seen and set(seen) == {0}  # the single image is repeated to fill K=4
    assert len(seen) % 4 == 0


def test_deterministic_and_changes_with_epoch():
    a, b = PKSampler(PIDS, 4, 2, seed=5), PKSampler(PIDS, 4, 2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and len(list(a)) == len(first)
    assert list(PKSampler(PIDS, 4, 2, seed=6)) != first
    b.load_state_dict(a.state_dict())
    assert list(b) == list(a) and b.state_dict() == {"epoch": 1, "seed": 5}


def test_ranks_are_disjoint_whole_batches_of_equal_length():
    full = PKSampler(PIDS, 4, 2, seed=3)
    full_batches = [tuple(b) for b in _batches(full)]
    shards = [PKSampler(PIDS, 4, 2, seed=3, rank=r, world_size=3) for r in range(3)]
    per_rank = [[tuple(b) for b in _batches(s)] for s in shards]
    assert len({len(b) for b in per_rank}) == 1
    assert len(per_rank[0]) == len(full_batches) // 3
    flat = [b for bs in per_rank for b in bs]
    assert len(set(flat)) == len(flat)  # disjoint
    assert set(flat) <= set(full_batches)  # whole batches of the same epoch draw


def test_fixed_length_when_one_identity_dominates():
    pids = [0] * 40 + [1] * 4 + [2] * 4 + [3] * 4
    # chunks (k=4): 10, 1, 1, 1 -> B = 3 batches of P=2 distinct (not floor(13 / 2) = 6):
    # identity 0 pairs once with each of 1, 2, 3
    assert max_pk_batches([10, 1, 1, 1], 2) == 3
    assert max_pk_batches([3, 3, 3], 3) == 3 and max_pk_batches([5, 1], 2) == 1
    s = PKSampler(pids, 2, 4)
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = _batches(s)
        assert len(batches) == 3
        assert sorted(sorted({pids[i] for i in b}) for b in batches) == [[0, 1], [0, 2], [0, 3]]


def test_errors():
    with pytest.raises(DatasetError, match="2 of 5 samples are unlabelled"):
        PKSampler([0, 0, -1, 1, -1], 2, 1)
    s = PKSampler([0, 0, -1, 1, -1], 2, 1, unlabelled_ok=True)
    assert all(i not in (2, 4) for i in s)
    with pytest.raises(DatasetError, match="fewer than P=3"):
        PKSampler([0, 1, 1], 3, 2)
    with pytest.raises(DatasetError, match="cannot be shared by 4 ranks"):
        PKSampler([0, 1, 2, 3], 2, 1, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        PKSampler([0, 1], 1, 1, rank=1, world_size=1)


def test_train_and_test_loaders(make_market):
    ds = build_dataset("market1501", make_market())
    tf = build_transforms(16, 8, train=True, augmentation=Augmentation(pad=2))
    loader = build_train_loader(ds.train, tf, PKSampling(2, 2, seed=0))
    assert loader.sampler.batch_size == loader.batch_size == 4
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 4 ids x 4 images, K=2 -> 8 chunks / P=2
    for batch in batches:
        assert batch["img"].shape == (4, 3, 16, 8)
        assert batch["pid"].dtype == torch.int64
        assert sorted(Counter(batch["pid"].tolist()).values()) == [2, 2]
    test = build_test_loader(ds.gallery, build_transforms(16, 8, train=False), batch_size=2)
    idx = torch.cat([b["index"] for b in test]).tolist()
    assert idx == list(range(len(ds.gallery)))
    assert [b["img"].shape[0] for b in test] == [2, 1]


def test_worker_augmentation_is_reproducible(make_market):
    ds = build_dataset("market1501", make_market())
    tf = build_transforms(16, 8, train=True, augmentation=Augmentation(pad=2))

    def run(seed: int) -> torch.Tensor:
        loader = build_train_loader(ds.train, tf, PKSampling(2, 2, seed=seed), num_workers=1)
        return torch.cat([b["img"] for b in loader])

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


def test_reseeding_the_generator_replays_worker_augmentation(make_market):
    # workers are re-created every epoch (not persistent), so re-seeding the loader's
    # generator - as the trainer does from (seed, epoch) - replays the same augmentation: a
    # resumed run draws what an uninterrupted one would have drawn
    ds = build_dataset("market1501", make_market())
    tf = build_transforms(16, 8, train=True, augmentation=Augmentation(pad=2))
    loader = build_train_loader(ds.train, tf, PKSampling(2, 2, seed=0), num_workers=1)
    assert not loader.persistent_workers
    loader.generator.manual_seed(7)
    a = torch.cat([b["img"] for b in loader])
    b = torch.cat([b["img"] for b in loader])
    loader.generator.manual_seed(7)
    c = torch.cat([b["img"] for b in loader])
    assert torch.equal(a, c) and not torch.equal(a, b)
