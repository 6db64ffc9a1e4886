"""DataLoaders for training (PK batches) and testing (fixed order).

Batches are dicts ``{"img": float tensor [B, 3, H, W], "pid": long [B], "camid": long [B],
"index": long [B]}`` (``index`` = position in the sample list, to put features back in order).

Reproducibility: the PK order depends only on ``(seed, epoch)`` (see
:class:`~adaptreid.data.sampler.PKSampler`). Worker processes are seeded from a
``torch.Generator`` seeded with ``(seed, rank)``, so augmentation in workers is reproducible
and differs between ranks. With ``num_workers=0`` augmentation runs in the main process and
draws from torch's global RNG: seed it with ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .datasets import Sample
from .images import ImageDataset
from .sampler import PKSampler

__all__ = ["build_test_loader", "build_train_loader", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """Seed numpy in a DataLoader worker from torch's per-worker seed (torch seeds itself
    and ``random``; numpy is not seeded by default)."""
    np.random.seed(torch.initial_seed() % 2**32)


def _generator(seed: int, rank: int = 0) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % 2**63))


def build_train_loader(
    samples: Sequence[Sample],
    transform: Callable[[Any], Any],
    p: int,
    k: int,
    *,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    unlabelled_ok: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of ``P x K`` batches over ``samples`` (every batch full: ``drop_last``).

    ``loader.sampler`` is the :class:`PKSampler`; call ``loader.sampler.set_epoch(e)`` before
    each epoch. ``unlabelled_ok=True`` leaves pid -1 samples out instead of raising.
    """
    sampler = PKSampler(
        [s.pid for s in samples],
        p,
        k,
        seed=seed,
        rank=rank,
        world_size=world_size,
        unlabelled_ok=unlabelled_ok,
    )
    return DataLoader(
        ImageDataset(samples, transform),
        batch_size=sampler.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        # workers are re-created each epoch so that their seeds come from ``generator``,
        # which the trainer re-seeds from (seed, epoch): a resumed run then draws the same
        # augmentations as an uninterrupted one
        persistent_workers=False,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=_generator(seed, rank),
        pin_memory=pin_memory,
    )


def build_test_loader(
    samples: Sequence[Sample],
    transform: Callable[[Any], Any],
    batch_size: int = 128,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``samples`` in their order (no shuffling, last batch may be short)."""
    return DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        # its own generator, so that iterating a test loader never consumes the global RNG
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
