"""DataLoaders for training (PK batches) and testing (fixed order).

Batches are dicts ``{"img": float tensor [B, 3, H, W], "pid": long [B], "camid": long [B],
"index": long [B], "bad": [(index, path, reason), ...]}`` (``index`` = position in the sample
list, to put features back in order; ``bad`` = the images of this batch that could not be read
and were dropped from it, always present, empty unless ``bad_images="skip"``).

Bad images (``bad_images``)
---------------------------
``"error"`` (default): an unreadable image raises :class:`~adaptreid.data.images.ImageReadError`
naming the file. ``"skip"``: it is dropped from its batch by :func:`collate_skip_bad` and
listed in ``batch["bad"]``, so a long run goes on; the caller records it (e.g. in a
:class:`~adaptreid.data.bad_images.BadImageLog`). Consequences:

- a **train** batch is then *short* by the dropped images: ``P * K`` minus the bad ones, so an
  identity may have fewer than ``K`` images in it (batch-hard triplet skips anchors left
  without a positive). A batch left with fewer than 2 images (BatchNorm cannot train on one)
  is not yielded; its bad images are reported with the next batch yielded, and every bad
  image met in the current epoch is in ``loader.epoch_bad``. An epoch may therefore have fewer
  batches than ``len(loader)``. Under ``torch.distributed`` the ranks skip such a batch
  together (see :class:`TrainLoader`), so DDP stays in step;
- a **test** batch is short too (possibly empty: ``img`` of shape ``(0,)``); ``index`` says
  which samples the rows are.

Reproducibility: the PK order depends only on ``(seed, epoch)`` (see
:class:`~adaptreid.data.sampler.PKSampler`). Worker processes are seeded from a
``torch.Generator`` seeded with ``(seed, rank)``, so augmentation in workers is reproducible
and differs between ranks. With ``num_workers=0`` augmentation runs in the main process and
draws from torch's global RNG: seed it with ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from ..errors import DatasetError
from .datasets import Sample
from .image_cache import ImageCache
from .images import ImageDataset
from .sampler import PKSampler

__all__ = [
    "PKSampling",
    "TrainLoader",
    "build_test_loader",
    "build_train_loader",
    "collate_skip_bad",
    "seed_worker",
]

BadImage = tuple[int, str, str]
"""``(index in the sample list, path, reason)`` of an image that could not be read."""


def collate_skip_bad(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate :class:`ImageDataset` items, leaving out those marked bad (``"bad"`` key, from
    ``bad_images="skip"``) and listing them as ``batch["bad"] = [(index, path, reason), ...]``
    (always present). A batch of bad items only has empty ``img`` / ``pid`` / ``camid`` /
    ``index`` tensors."""
    good = [it for it in items if it.get("bad") is None]
    bad = [(int(it["index"]), str(it["path"]), str(it["bad"])) for it in items if it.get("bad")]
    if good:
        batch = default_collate(good)
    else:
        batch = {
            "img": torch.empty(0),
            "pid": torch.empty(0, dtype=torch.long),
            "camid": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
        }
    batch["bad"] = bad
    return batch


def _empty_split_error(samples: Sequence[Sample], what: str) -> DatasetError:
    reason = getattr(samples, "reason", None)
    if reason:
        return DatasetError(f"{what}: {reason}")
    return DatasetError(f"{what}: the sample list is empty")


class TrainLoader(DataLoader):
    """A :class:`DataLoader` that never yields a batch of fewer than ``min_batch`` images
    (after bad images were dropped, see the module docstring). ``epoch_bad`` lists every bad
    image met since the current iteration over the loader began.

    Under ``torch.distributed`` with ``sync_skips`` (the train loader in skip mode), the ranks
    agree on every batch (one tiny all-reduce): a batch too short on any rank is skipped on
    all of them, so that DDP ranks keep taking the same number of steps."""

    def __init__(
        self, *args: Any, min_batch: int = 2, sync_skips: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_batch = int(min_batch)
        self.sync_skips = bool(sync_skips)
        self.epoch_bad: list[BadImage] = []

    def _all_ranks_ok(self, ok: bool) -> bool:
        if not (self.sync_skips and dist.is_available() and dist.is_initialized()):
            return ok
        if dist.get_world_size() == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def __iter__(self):  # type: ignore[override]
        self.epoch_bad = []
        pending: list[BadImage] = []
        for batch in super().__iter__():
            bad = list(batch.get("bad", []))
            self.epoch_bad.extend(bad)
            if not self._all_ranks_ok(len(batch["index"]) >= self.min_batch):
                pending.extend(bad)
                continue
            batch["bad"] = pending + bad
            pending = []
            yield batch


def seed_worker(worker_id: int) -> None:
    """Seed numpy in a DataLoader worker from torch's per-worker seed (torch seeds itself
    and ``random``; numpy is not seeded by default)."""
    np.random.seed(torch.initial_seed() % 2**32)


def _generator(seed: int, rank: int = 0) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % 2**63))


@dataclass(frozen=True)
class PKSampling:
    """How :func:`build_train_loader` draws its ``P x K`` batches (the :class:`PKSampler`'s
    settings) and seeds them."""

    p: int
    """P: identities per batch."""
    k: int
    """K: images per identity in a batch (the batch is ``P x K`` images)."""
    seed: int
    """Seed of the sampler's draws and of the workers' augmentation (with ``rank``)."""
    rank: int = 0
    """This process's rank under torch.distributed: its share of the batches."""
    world_size: int = 1
    """Number of processes sharing the batches."""
    unlabelled_ok: bool = False
    """Leave samples with pid -1 out instead of raising."""


def build_train_loader(
    samples: Sequence[Sample],
    transform: Callable[[Any], Any],
    sampling: PKSampling,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    bad_images: str = "error",
    image_cache: ImageCache | None = None,
) -> TrainLoader:
    """A loader of ``P x K`` batches over ``samples`` (``drop_last``: every batch drawn is
    full; with ``bad_images="skip"`` it may come out short by its unreadable images, see the
    module docstring), drawn as ``sampling`` says. ``image_cache``: images decoded and
    resized once (:class:`~adaptreid.data.image_cache.ImageCache`); the random augmentation
    after the resize runs at every draw, so batches are those without the cache.

    ``loader.sampler`` is the :class:`PKSampler`; call ``loader.sampler.set_epoch(e)`` before
    each epoch. ``sampling.unlabelled_ok`` leaves pid -1 samples out instead of raising. An empty
    ``samples`` (e.g. the train split of an evaluation-only folder) raises
    :class:`DatasetError` naming what is missing.
    """
    if not samples:
        raise _empty_split_error(samples, "no training images")
    sm = sampling
    sampler = PKSampler(
        [s.pid for s in samples],
        sm.p,
        sm.k,
        seed=sm.seed,
        rank=sm.rank,
        world_size=sm.world_size,
        unlabelled_ok=sm.unlabelled_ok,
    )
    return TrainLoader(
        ImageDataset(samples, transform, bad_images=bad_images, image_cache=image_cache),
        batch_size=sampler.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        # workers are re-created each epoch so that their seeds come from ``generator``,
        # which the trainer re-seeds from (seed, epoch): a resumed run then draws the same
        # augmentations as an uninterrupted one
        persistent_workers=False,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=_generator(sm.seed, sm.rank),
        pin_memory=pin_memory,
        min_batch=min(2, sampler.batch_size),
        sync_skips=bad_images == "skip",
    )


def build_test_loader(
    samples: Sequence[Sample],
    transform: Callable[[Any], Any],
    batch_size: int = 128,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    bad_images: str = "error",
    image_cache: ImageCache | None = None,
) -> DataLoader:
    """A loader over ``samples`` in their order (no shuffling, last batch may be short; with
    ``bad_images="skip"`` unreadable images are left out of their batch and listed in
    ``batch["bad"]``). A split that the dataset lacks (see
    :class:`~adaptreid.data.datasets.MissingSplit`) raises :class:`DatasetError` naming it.
    ``image_cache``: images decoded and resized once, the same tensors
    (:class:`~adaptreid.data.image_cache.ImageCache`)."""
    if not samples and getattr(samples, "reason", None):
        raise _empty_split_error(samples, "no images to load")
    return DataLoader(
        ImageDataset(samples, transform, bad_images=bad_images, image_cache=image_cache),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        collate_fn=collate_skip_bad,
        # its own generator, so that iterating a test loader never consumes the global RNG
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
