"""CMC, mAP and mINP under the Market-1501 protocol, and the old CUHK03 single-gallery-shot CMC.

Protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015, and its
official evaluation code, as torchreid's ``eval_market1501`` also does it), per query:

1. Rank the whole gallery by ascending distance. **Ties are broken by gallery order** (the
   result equals ``np.argsort(row, kind="stable")``), so results are deterministic.
2. Drop the gallery entries that show the query's identity *from the query's camera* (same
   pid and same camid) and the junk entries (gallery pid ``-1``; datasets usually remove junk
   already, this is a safety net). Distractors with other pids (Market's ``0000``) stay.
3. A query whose identity has no remaining gallery entry is skipped (counted in
   ``num_queries - num_valid_queries``); if every query is skipped a :class:`DatasetError`
   (a ``ValueError``) is raised.
4. On the remaining list, with ``rel(k) = 1`` for a true match at (1-based) position ``k``:

   * CMC: ``cmc[k-1] = 1`` if the first true match is at position ``<= k``;
   * AP = ``sum_k P(k) rel(k) / num_rel`` (mean over the true matches of the precision at
     their positions);
   * INP = ``num_rel / R_hard`` with ``R_hard`` the position of the last (hardest) true match
     (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
     TPAMI 2021).

   CMC, mAP and mINP are the means over the valid queries. Every value is a **fraction in
   [0, 1]**; :meth:`RankResult.format_table` prints percentages. The CMC always has
   ``max_rank`` entries: when fewer gallery entries remain, its tail is 1 by definition
   (torchreid instead shortens the curve to the gallery size).

CUHK03 single-gallery-shot (the old CUHK03 protocol, Li et al., "DeepReID", CVPR 2014, as
torchreid's ``eval_cuhk03`` does it): after step 2, one image of each gallery identity is
sampled at random, the CMC is computed on that sampled list, and this is repeated
``num_repeats`` (10) times and averaged. As in torchreid, **AP and INP use the full remaining
list** (no sampling). "At random" is defined so that it does not depend on ``chunk_size``:
with ``ids`` the sorted non-junk gallery pids, query ``i`` draws
``u = np.random.default_rng((seed, i)).random((num_repeats, len(ids)))`` and in repeat ``r``
keeps, of identity ``ids[k]``'s remaining images taken in gallery order, the one at index
``min(floor(u[r, k] * n_k), n_k - 1)``.

Speed: queries are processed ``chunk_size`` rows at a time, memory ``O(chunk_size * G)``
beyond the inputs. Each chunk is sorted once (float32-representable distances: one sort of
``(distance bits, column)`` uint64 keys, which is stable by construction); everything after
the sort works on the sparse list of true matches (about ``G / num_ids`` per query): a true
match's position among the remaining entries is its position in the sorted row minus the
removed entries before it. ``tests/test_metrics.py`` holds the plain per-query loop it equals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["RankResult", "SingleGalleryShot", "evaluate_rank"]

JUNK_PID = -1


@dataclass(frozen=True)
class SingleGalleryShot:
    """The old CUHK03 protocol's CMC in :func:`evaluate_rank` (see the module docstring):
    one random gallery image per identity, the CMC averaged over several draws."""

    num_repeats: int = 10
    """Draws averaged (torchreid's 10)."""
    seed: int = 0
    """Seed of the draws (query ``i`` uses ``np.random.default_rng((seed, i))``)."""


@dataclass
class RankResult:
    """Result of :func:`evaluate_rank`. Every metric is a fraction in [0, 1].

    Attributes:
        cmc: ``(max_rank,)`` CMC curve; ``cmc[0]`` is rank-1.
        mAP: mean average precision over the valid queries.
        mINP: mean inverse negative penalty over the valid queries.
        num_valid_queries: queries with at least one true match left in the gallery.
        num_queries: all queries (the rest were skipped).
        ap: ``(num_queries,)`` per-query AP, NaN for skipped queries.
        inp: ``(num_queries,)`` per-query INP, NaN for skipped queries.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    ap: np.ndarray = field(repr=False)
    inp: np.ndarray = field(repr=False)

    def rank(self, k: int) -> float:
        """Rank-``k`` accuracy (``cmc[k - 1]``), a fraction."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank-{k} is outside the CMC curve (max_rank={len(self.cmc)})")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float | int]:
        """``rank1``, ``rank5``, ``rank10`` (those within ``max_rank``), ``mAP``, ``mINP`` as
        fractions in [0, 1], plus the query counts: ready for a JSON metrics line."""
        out: dict[str, float | int] = {
            f"rank{k}": self.rank(k) for k in (1, 5, 10) if k <= len(self.cmc)
        }
        out["mAP"] = float(self.mAP)
        out["mINP"] = float(self.mINP)
        out["num_valid_queries"] = int(self.num_valid_queries)
        out["num_queries"] = int(self.num_queries)
        return out

    def format_table(self, ranks: tuple[int, ...] = (1, 5, 10)) -> str:
        """A small text table in percent, for the CLI."""
        rows = [("mAP", self.mAP), ("mINP", self.mINP)]
        rows += [(f"Rank-{k}", self.rank(k)) for k in ranks if k <= len(self.cmc)]
        lines = [f"{'metric':<8}{'value':>8}"]
        lines += [f"{name:<8}{100.0 * value:>7.2f}%" for name, value in rows]
        lines.append(f"({self.num_valid_queries} of {self.num_queries} queries evaluated)")
        return "\n".join(lines)


# ---------------------------------------------------------------- shared helpers (ranklist too)


def _labels(x: object, name: str, n: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be a 1-D array of length {n}, got shape {arr.shape}")
    return arr


def _check_inputs(
    distmat: object, q_pids: object, g_pids: object, q_camids: object, g_camids: object
) -> tuple[object, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(distmat, torch.Tensor):
        distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat is empty: shape {tuple(distmat.shape)}")
    return (
        distmat,
        _labels(q_pids, "q_pids", num_q),
        _labels(g_pids, "g_pids", num_g),
        _labels(q_camids, "q_camids", num_q),
        _labels(g_camids, "g_camids", num_g),
    )


def _rows(distmat: object, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a numpy array (a torch matrix is moved to CPU one chunk at a
    time). NaN distances are rejected: they have no place in a ranking."""
    if isinstance(distmat, torch.Tensor):
        block = distmat[start:stop].detach()
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()  # exact, keeps ties
        rows = block.cpu().numpy()
    else:
        rows = distmat[start:stop]
    if not (np.issubdtype(rows.dtype, np.floating) or np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"distmat must hold real numbers, got dtype {rows.dtype}")
    if np.issubdtype(rows.dtype, np.floating) and np.isnan(rows).any():
        raise ValueError(f"distmat has NaN values (in query rows {start}..{stop - 1})")
    return rows


def stable_argsort_rows(d: np.ndarray) -> np.ndarray:
    """Row-wise ascending argsort of a 2-D array that breaks ties by column index.

    Equal to ``np.argsort(d, axis=1, kind="stable")`` (``-0.0`` and ``0.0`` are equal, NaN
    is not supported) and several times faster. When every value is exactly representable in
    float32 (float32/float16 input, or float64/integers that round-trip), each entry becomes
    one uint64 key ``(order-preserving float32 bits) << 32 | column``; the keys are unique,
    so one plain sort gives the stable order. Otherwise: a fast unstable argsort, then, if the
    sorted rows hold ties, one sort of unique int64 keys ``(tie group, column)``.
    """
    d = np.asarray(d)
    n = d.shape[1]
    if n < 2:
        return np.argsort(d, axis=1)
    f = d if d.dtype in (np.float32, np.float16) else d.astype(np.float32)
    if n < 2**32 and (f is d or np.array_equal(f, d)):
        u = (f.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
        # IEEE order as unsigned order: negatives flip every bit, positives the sign bit.
        u = u ^ np.where(u >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
        key = u.astype(np.uint64)
        key <<= np.uint64(32)
        key |= np.arange(n, dtype=np.uint64)
        key.sort(axis=1)
        key &= np.uint64(0xFFFFFFFF)
        return key.view(np.int64)

    order = np.argsort(d, axis=1)
    s = np.take_along_axis(d, order, axis=1)
    new_group = s[:, 1:] != s[:, :-1]
    if new_group.all():
        return order
    group = np.zeros(d.shape, dtype=np.int64)
    np.cumsum(new_group, axis=1, out=group[:, 1:])
    key = group * n + order
    key.sort(axis=1)
    key -= group * n  # a tie group keeps its positions, so this leaves the columns
    return key


@dataclass
class _RankedChunk:
    """A chunk of query rows, ranked. ``order[i]`` is the gallery ranking of row ``i``; the
    valid true matches (not same camera, not junk) are listed row-major, each row's in ranked
    order: row ``r``, column ``col`` in the ranked row, 1-based position ``pos`` among the
    remaining (valid) entries."""

    order: np.ndarray  # (c, G) int64
    r: np.ndarray  # (M,)
    col: np.ndarray  # (M,)
    pos: np.ndarray  # (M,)
    num_rel: np.ndarray  # (c,) valid true matches per row


def _rank_chunk(
    d: np.ndarray, qp: np.ndarray, qc: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray
) -> _RankedChunk:
    num_g = d.shape[1]
    order = stable_argsort_rows(d)
    gp = g_pids[order]
    mr, mc = np.nonzero(gp == qp[:, None])  # every entry with the query's pid, row-major
    same_cam = g_camids[order[mr, mc]] == qc[mr]
    junk_query = qp[mr] == JUNK_PID  # a pid -1 query matches only junk
    keep = ~same_cam & ~junk_query
    removed = [(mr * num_g + mc)[same_cam & ~junk_query]]
    if np.any(g_pids == JUNK_PID):
        jr, jc = np.nonzero(gp == JUNK_PID)
        removed.append(jr * num_g + jc)
    removed_keys = np.sort(np.concatenate(removed))
    r, col = mr[keep], mc[keep]
    flat = r * num_g + col
    removed_before = np.searchsorted(removed_keys, flat) - np.searchsorted(removed_keys, r * num_g)
    return _RankedChunk(
        order=order,
        r=r,
        col=col,
        pos=col + 1 - removed_before,
        num_rel=np.bincount(r, minlength=len(qp)),
    )


# ---------------------------------------------------------------------------------- evaluation


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    max_rank: int = 50,
    single_gallery_shot: SingleGalleryShot | None = None,
    chunk_size: int = 256,
) -> RankResult:
    """CMC / mAP / mINP of a ``(Q, G)`` distance matrix under the Market-1501 protocol.

    See the module docstring for the exact protocol (same-pid-same-camera and pid ``-1``
    gallery entries removed, ties broken by gallery order, queries without a true match
    skipped, fractions in [0, 1]).

    Args:
        distmat: ``(Q, G)`` distances (numpy or torch, any device); smaller is closer.
        q_pids, g_pids, q_camids, g_camids: identity and camera labels (numpy or torch).
        max_rank: length of the CMC curve.
        single_gallery_shot: with a :class:`SingleGalleryShot`, the CMC of the old CUHK03
            protocol (one random gallery image per identity, averaged over its
            ``num_repeats`` draws seeded by its ``seed``); AP and INP stay on the full list,
            as in torchreid. None: the Market-1501 CMC.
        chunk_size: query rows processed at once; memory is ``O(chunk_size * G)``.

    Raises:
        DatasetError: (a ``ValueError``) if no query has a true match in the gallery.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sgs = single_gallery_shot
    if sgs is not None and sgs.num_repeats < 1:
        raise ValueError(f"num_repeats must be >= 1, got {sgs.num_repeats}")
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_q, num_g = distmat.shape
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    cmc_sum = np.zeros(max_rank)
    if sgs is not None:
        identities = _GalleryIdentities(g_pids)

    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        qp, qc = q_pids[start:stop], q_camids[start:stop]
        ch = _rank_chunk(_rows(distmat, start, stop), qp, qc, g_pids, g_camids)
        ok = np.flatnonzero(ch.num_rel > 0)
        if len(ok) == 0:
            continue
        num_rel = ch.num_rel[ok]
        first = np.cumsum(ch.num_rel) - ch.num_rel  # index of each row's first true match
        hits = np.arange(1, len(ch.r) + 1) - first[ch.r]  # true matches up to this one
        ap[start + ok] = np.bincount(ch.r, hits / ch.pos, minlength=len(qp))[ok] / num_rel
        inp[start + ok] = num_rel / ch.pos[first[ok] + num_rel - 1]
        if sgs is None:
            cmc_sum += _cmc_counts(ch.pos[first[ok]], max_rank)
        else:
            cmc_sum += identities.single_shot_cmc_counts(
                ch, ok, first, start, qp, max_rank, sgs.num_repeats, sgs.seed
            )

    num_valid = int(np.count_nonzero(~np.isnan(ap)))
    if num_valid == 0:
        raise DatasetError(
            f"none of the {num_q} queries has a true match in the gallery (a gallery image "
            "with the query's pid from another camera); check that query and gallery come "
            "from the same test split and that pids/camids are parsed correctly"
        )
    return RankResult(
        cmc=cmc_sum / num_valid,
        mAP=float(np.nanmean(ap)),
        mINP=float(np.nanmean(inp)),
        num_valid_queries=num_valid,
        num_queries=num_q,
        ap=ap,
        inp=inp,
    )


def _cmc_counts(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
    """``sum over queries of [first_rank <= k]`` for ``k = 1..max_rank``."""
    hist = np.bincount(np.minimum(first_rank, max_rank + 1) - 1, minlength=max_rank + 1)
    return np.cumsum(hist[:max_rank]).astype(np.float64)


class _GalleryIdentities:
    """The gallery grouped by identity, for the single-gallery-shot draws."""

    def __init__(self, g_pids: np.ndarray) -> None:
        real = np.flatnonzero(g_pids != JUNK_PID)
        self.pids, code = np.unique(g_pids[real], return_inverse=True)
        grouped = np.argsort(code.reshape(-1), kind="stable")
        self.members = real[grouped]  # gallery columns, by identity, in gallery order
        self.count = np.bincount(code.reshape(-1), minlength=len(self.pids))
        self.start = np.cumsum(self.count) - self.count

    def single_shot_cmc_counts(
        self,
        ch: _RankedChunk,
        ok: np.ndarray,
        first: np.ndarray,
        start: int,
        qp: np.ndarray,
        max_rank: int,
        num_repeats: int,
        seed: int,
    ) -> np.ndarray:
        """CMC counts of the valid rows ``ok`` of a chunk, averaged over the repeats.

        With one image per identity, the rank of the first true match is 1 + the number of
        other identities whose drawn image is ranked before the drawn true match.
        """
        rows = np.arange(len(ok))
        order = ch.order[ok]
        position = np.empty_like(order)  # position[i, g]: where gallery entry g is ranked
        np.put_along_axis(position, order, np.arange(order.shape[1])[None, :], axis=1)
        # The query identity's remaining images are exactly its valid true matches. Reorder
        # each row's block of them by gallery column (the blocks stay where they are).
        by_gallery = np.lexsort((ch.order[ch.r, ch.col], ch.r))
        own_ranked = ch.col[by_gallery]  # ranked column, rows' blocks in gallery order
        own = np.searchsorted(self.pids, qp[ok])
        num_rel = ch.num_rel[ok]
        # One generator per query, so the draws do not depend on chunk_size; drawing the rows
        # of the documented (num_repeats, num_ids) array one repeat at a time gives the same
        # numbers and keeps memory at O(chunk_size * num_ids).
        rngs = [np.random.default_rng((seed, start + int(i))) for i in ok]
        counts = np.zeros(max_rank)
        for _ in range(num_repeats):
            u = np.stack([rng.random(len(self.pids)) for rng in rngs])
            pick = np.minimum((u * self.count).astype(np.int64), self.count - 1)
            drawn = np.take_along_axis(position, self.members[self.start + pick], axis=1)
            k = np.minimum((u[rows, own] * num_rel).astype(np.int64), num_rel - 1)
            p_own = own_ranked[first[ok] + k]
            before = (drawn < p_own[:, None]).sum(axis=1) - (drawn[rows, own] < p_own)
            counts += _cmc_counts(before + 1, max_rank)
        return counts / num_repeats
