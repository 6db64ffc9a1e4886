"""PAST's RTL batches: P x K batches with ranking-based triplets (eq. 4): anchors,
positives from ranks ``1..eta`` and negatives from ranks ``eta+1..2 eta`` of each anchor's row
of the ranking score matrix (eq. 2). Also MSPLR's batches when ``loss.rtl_weight > 0``.

A conservative-stage batch is the P x K pseudo-label batch of ``B`` anchors (the anchors CTL
uses, as eq. 4 requires), then for every anchor one positive drawn uniformly from ranks
``1..eta`` of its row and one negative from ``eta+1..2 eta``; the ``3 B`` images go through
the network in one forward pass. Positives / negatives come from the whole target set T (the
ranking is computed on T), outliers included. The draw is made in the main process by
:class:`RankingTripletBatchSampler` from ``(seed, epoch, rank, batch)``, so it is
reproducible and a resumed run draws the same triplets. The batch entries ``rtl_role`` /
``rtl_rank`` are read by :mod:`adaptreid.losses.past_loss`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.datasets import Sample
from ..data.image_cache import ImageCache
from ..data.images import ImageDataset
from ..data.loaders import collate_skip_bad, seed_worker
from ..data.sampler import PKSampler
from ..engine.builders import identities_per_batch, train_transform
from ..losses.ranking_triplet import sample_rtl_pairs
from ..runtime import distributed as D

__all__ = [
    "RankingTripletBatchSampler",
    "collate_triplets",
    "ranking_triplet_loader",
    "step_loader",
]


class RankingTripletBatchSampler:
    """Batches of ``(dataset index, role, rank)`` keys: P x K anchors, then one positive and
    one negative per anchor for RTL (roles 0 / 1 / 2, ranks 1-based, 0 for anchors). Without
    ``ranked`` it yields the anchors only.

    Args:
        pk: a :class:`PKSampler` over the *whole* target set with pseudo-labels, outliers
            (-1) left out (``unlabelled_ok=True``): the anchors come from T_U.
        ranked: ``(N, >= 2 eta)`` neighbour table of the ranking score matrix
            (:func:`adaptreid.pseudo.ranking.ranked_neighbors`), or None.
        eta: RTL's eta.
        seed: the (positive, negative) draw of batch ``b`` of epoch ``e`` on rank ``r`` uses
            ``numpy.random.default_rng((seed, e, r, b))``.
    """

    def __init__(
        self,
        pk: PKSampler,
        ranked: np.ndarray | None = None,
        eta: int = 20,
        *,
        seed: int = 0,
    ) -> None:
        self.sampler = pk  # the trainer calls set_epoch on it too (same epoch: harmless)
        self.ranked = None if ranked is None else np.asarray(ranked, dtype=np.int64)
        self.eta = int(eta)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        bs = self.sampler.batch_size
        flat = np.fromiter(iter(self.sampler), dtype=np.int64)
        for b in range(len(flat) // bs):
            anchors = flat[b * bs : (b + 1) * bs]
            keys = [(int(a), 0, 0) for a in anchors]
            if self.ranked is not None:
                rng = np.random.default_rng((self.seed, self.epoch, self.sampler.rank, b))
                pos, neg, pr, nr = sample_rtl_pairs(self.ranked, anchors, self.eta, rng)
                keys += [(int(i), 1, int(r)) for i, r in zip(pos, pr)]
                keys += [(int(i), 2, int(r)) for i, r in zip(neg, nr)]
            yield keys


class _KeyedImages(ImageDataset):
    """``ImageDataset`` indexed by ``(index, role, rank)`` keys; adds ``rtl_role`` /
    ``rtl_rank`` to each item."""

    def __getitem__(self, key):  # type: ignore[override]
        index, role, rank = key
        item = super().__getitem__(int(index))
        item["rtl_role"], item["rtl_rank"] = int(role), int(rank)
        return item


def collate_triplets(items: list[dict]) -> dict:
    """:func:`~adaptreid.data.loaders.collate_skip_bad` for RTL batches: an unreadable image
    (``bad_images="skip"``) removes its whole triplet (the anchor, its positive and its
    negative), so that the batch keeps its anchors / positives / negatives layout."""
    roles = [it["rtl_role"] for it in items]
    if 1 not in roles:  # anchors only (no RTL)
        return collate_skip_bad(items)
    b = roles.count(0)
    bad_triplets = {i % b for i, it in enumerate(items) if it.get("bad") is not None}
    if not bad_triplets:
        return collate_skip_bad(items)
    good = [it for i, it in enumerate(items) if i % b not in bad_triplets]
    batch = collate_skip_bad(good)
    batch["bad"] = [
        (int(it["index"]), str(it["path"]), str(it["bad"])) for it in items if it.get("bad")
    ]
    return batch


def ranking_triplet_loader(
    cfg,
    train: Sequence[Sample],
    labels: np.ndarray,
    *,
    ranked: np.ndarray | None = None,
    eta: int = 20,
    seed: int = 0,
    bad_images: str = "error",
    image_cache: ImageCache | None = None,
) -> DataLoader:
    """A P x K loader over the pseudo-labelled target images (``labels >= 0``; ``pid`` =
    label), with ``cfg.data``'s augmentation. With ``ranked`` each batch also holds one RTL
    positive and negative per anchor, from the whole of ``train`` (``pid`` -1 for outliers),
    and the entries ``rtl_role`` / ``rtl_rank``. ``bad_images="skip"``: an unreadable image
    drops its triplet from the batch (:func:`collate_triplets`). ``image_cache``: images
    decoded and resized once (the augmentation still runs at every draw)."""
    d = cfg.data
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(train):
        raise ValueError(f"{len(labels)} labels for {len(train)} images")
    samples = [Sample(s.path, int(lab), s.camid) for s, lab in zip(train, labels)]
    p = identities_per_batch(cfg, len(np.unique(labels[labels >= 0])))
    pk = PKSampler(
        labels.tolist(),
        p,
        d.num_instances,
        seed=seed,
        rank=D.rank(),
        world_size=D.world_size(),
        unlabelled_ok=True,
    )
    return DataLoader(
        _KeyedImages(samples, train_transform(cfg), bad_images=bad_images, image_cache=image_cache),
        batch_sampler=RankingTripletBatchSampler(pk, ranked, eta, seed=seed),
        collate_fn=collate_triplets,
        num_workers=d.num_workers,
        persistent_workers=False,  # re-created each epoch: seeds from the trainer's generator
        worker_init_fn=seed_worker if d.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def step_loader(ctx, labels: np.ndarray, *, ranked: np.ndarray | None = None, eta: int = 20):
    """:func:`ranking_triplet_loader` over this step's target images, with the loop's step
    seed and unreadable-image mode (``ctx``: the method's
    :class:`~adaptreid.engine.context.LoopContext`), so a method states only its own
    choices (the ranking table, eta)."""
    return ranking_triplet_loader(
        ctx.cfg,
        ctx.target.train,
        labels,
        ranked=ranked,
        eta=eta,
        seed=ctx.seed,
        bad_images=ctx.bad_images,
        image_cache=ctx.image_cache(),
    )
