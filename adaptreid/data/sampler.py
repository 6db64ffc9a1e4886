"""PK sampling: batches of ``P`` distinct identities x ``K`` images each (for triplet losses).

How one epoch is drawn (all from ``numpy.random.default_rng((seed, epoch))``, so it is
deterministic given ``seed`` and ``epoch`` and independent of any global RNG):

1. For each identity, shuffle its indices and cut them into chunks of ``K``. The leftover
   (``n mod K`` images) is not used this epoch; since the shuffle changes every epoch, every
   image is used over epochs. **Identities with fewer than K images are drawn with
   replacement** to one chunk of ``K``. So identity ``i`` gives ``c_i = max(1, n_i // K)``
   chunks, a number that does not depend on the epoch.
2. The epoch has a fixed number of batches ``B``: the largest ``B`` with
   ``sum_i min(c_i, B) >= P * B`` (the most batches of P *distinct* identities the chunks can
   fill). That is ``floor(sum_i c_i / P)`` unless a few identities own most of the chunks.
   Chunks beyond what ``B`` batches can hold are dropped at random.
3. Batches are filled one by one: identities that must appear in every remaining batch are
   taken, and the rest of the ``P`` places go to identities drawn at random with probability
   proportional to their remaining chunks (like drawing chunks from a shuffled pile, as
   torchreid's ``RandomIdentitySampler`` does, but with a guaranteed length).

Each batch is yielded as ``P * K`` consecutive indices (``K`` per identity). With
``world_size > 1`` every rank draws the same epoch and keeps every ``world_size``-th batch
(whole batches, the same number per rank, disjoint), so DDP ranks stay in step.

Call :meth:`PKSampler.set_epoch` before each epoch (as with ``DistributedSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["PKSampler", "max_pk_batches"]


def max_pk_batches(chunks_per_identity: Sequence[int], p: int) -> int:
    """The largest ``B`` with ``sum_i min(c_i, B) >= p * B``: how many batches of ``p``
    distinct identities can be filled from ``c_i`` chunks of identity ``i``."""
    counts = np.asarray(chunks_per_identity, dtype=np.int64)
    lo, hi = 0, int(counts.sum()) // p
    while lo < hi:  # the feasible B form an interval [0, B*] (concave in B, 0 at B = 0)
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PKSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices, ``P * K`` per batch; see the module docstring for the scheme.

    Args:
        pids: identity of each dataset index.
        p: identities per batch. k: images per identity.
        seed: base seed (the epoch's draw depends only on ``seed`` and the epoch).
        rank, world_size: this process's shard (whole batches).
        unlabelled_ok: if True, indices with pid ``-1`` (unlabelled, e.g. clustering
            outliers) are left out of sampling; if False (default) they are an error.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        unlabelled_ok: bool = False,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be >= 1, got p={p}, k={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: need 0 <= rank < world_size, got {rank}, {world_size}")
        pid_array = np.asarray(pids, dtype=np.int64).reshape(-1)
        if (pid_array < -1).any():
            raise DatasetError(
                f"PKSampler: pids must be >= 0 (or -1 = unlabelled), got "
                f"{sorted(set(pid_array[pid_array < -1].tolist()))[:5]}"
            )
        n_unlabelled = int((pid_array == -1).sum())
        if n_unlabelled and not unlabelled_ok:
            raise DatasetError(
                f"PKSampler: {n_unlabelled} of {len(pid_array)} samples are unlabelled "
                f"(pid -1); PK batches need labels. Drop them, or pass unlabelled_ok=True to "
                f"leave them out of sampling"
            )
        self.p, self.k = int(p), int(k)
        self.seed, self.epoch = int(seed), 0
        self.rank, self.world_size = int(rank), int(world_size)
        labelled = np.flatnonzero(pid_array >= 0)
        order = labelled[np.argsort(pid_array[labelled], kind="stable")]
        identities, starts = np.unique(pid_array[order], return_index=True)
        self._groups = np.split(order, starts[1:]) if len(order) else []
        self.num_identities = len(identities)
        if self.num_identities < self.p:
            raise DatasetError(
                f"PKSampler: {self.num_identities} labelled identities, fewer than P={self.p} "
                f"needed for one batch"
            )
        self._chunks = np.array([max(1, len(g) // self.k) for g in self._groups], dtype=np.int64)
        self.num_batches_total = max_pk_batches(self._chunks, self.p)
        self.num_batches = self.num_batches_total // self.world_size
        if self.num_batches == 0:
            raise DatasetError(
                f"PKSampler: {self.num_batches_total} batch(es) per epoch cannot be shared by "
                f"{self.world_size} ranks; use fewer ranks or a smaller P/K"
            )

    @property
    def batch_size(self) -> int:
        """``P * K``."""
        return self.p * self.k

    def __len__(self) -> int:
        """Indices yielded per epoch on this rank (``num_batches * P * K``)."""
        return self.num_batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        if epoch < 0:
            raise ValueError(f"PKSampler: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All ``num_batches_total`` batches of ``epoch`` (default: the current one), before
        sharding; each an array of ``P * K`` indices."""
        rng = np.random.default_rng((self.seed, self.epoch if epoch is None else epoch))
        chunks: list[list[np.ndarray]] = []
        for group in self._groups:
            if len(group) < self.k:
                picked = rng.choice(group, size=self.k, replace=True)
            else:
                picked = rng.permutation(group)
            n = len(picked) // self.k
            chunks.append([picked[i * self.k : (i + 1) * self.k] for i in range(n)])

        B, P = self.num_batches_total, self.p
        remaining = np.minimum(self._chunks, B)
        excess = int(remaining.sum()) - P * B
        if excess:  # drop `excess` chunks uniformly at random among the usable ones
            owners = np.repeat(np.arange(len(remaining)), remaining)
            dropped = rng.choice(owners, size=excess, replace=False)
            remaining -= np.bincount(dropped, minlength=len(remaining))

        taken = np.zeros(len(remaining), dtype=np.int64)
        out = []
        for left in range(B, 0, -1):  # invariant: remaining.sum() == P * left, all <= left
            must = np.flatnonzero(remaining == left)
            rest = np.flatnonzero((remaining > 0) & (remaining < left))
            n_rest = P - len(must)
            if n_rest:
                weights = remaining[rest] / remaining[rest].sum()
                rest = rng.choice(rest, size=n_rest, replace=False, p=weights)
            else:
                rest = rest[:0]
            ids = np.concatenate([must, rest])
            ids = ids[rng.permutation(len(ids))]
            out.append(np.concatenate([chunks[i][taken[i]] for i in ids]))
            taken[ids] += 1
            remaining[ids] -= 1
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[int]:
        mine = self.batches()[self.rank :: self.world_size][: self.num_batches]
        for batch in mine:
            yield from batch.tolist()

    def __repr__(self) -> str:
        return (
            f"PKSampler(p={self.p}, k={self.k}, identities={self.num_identities}, "
            f"batches={self.num_batches}, seed={self.seed}, epoch={self.epoch}, "
            f"rank={self.rank}/{self.world_size})"
        )
