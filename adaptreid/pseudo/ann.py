"""Approximate k nearest neighbours for the k-reciprocal encoding at large N: inverted lists
(IVF) whose candidates are searched by dense matrix products, so the distances found are the
exact path's.

The k-reciprocal encoding (Zhong et al., CVPR 2017, section 3) needs, per sample p, its
ranking N(p, k1 + 1) (eq. 4-6) and the row maximum of the original distance (the
normalisation before the Gaussian kernel of eq. 7). The exact path
(:mod:`adaptreid.pseudo.topk`) computes all N^2 / 2 distances: O(N^2 d), 480 s at
N = 200,000 on 2 cores and hours at N = 1,000,000. This path computes a small fraction of
them:

1. **list space**: the mean and the covariance of a seeded sample of ``train_per_list *
   nlist`` rows (at most :data:`MAX_TRAIN`); the leading principal components that stand
   apart from the rest (an eigenvalue more than :data:`GAP` times the next one, among the
   first :data:`MAX_DROP`) are projected out, and the rows L2-normalised. Such directions
   carry variance that many identities share (a camera's colour cast or viewpoint: MSPLR
   section 3.5's reason for eq. 4): k-means on the raw features splits them first, so one
   person's images seen by two cameras land in lists far apart, and the lists near a row's
   own hold other people of its camera. Measured on the 2048-d synthetic re-ID features
   (BENCHMARKS.md, "Approximate neighbours", N = 20,000, 566 lists): without the projection
   the lists are camera-bound and uneven (the largest 1,402 rows) and DBSCAN's labels have
   nothing to do with the exact path's (ARI 0.015); with it the largest list has 87 rows and
   the labels are the exact path's (ARI 0.9999). The same features camera-normalised by eq.
   4 have no such gap and nothing is dropped. ``drop_components`` fixes the number
   instead;
2. **lists**: spherical k-means (faiss, ``niter`` iterations, seeded) of the sample in that
   space into ``nlist = round(4 sqrt(N))`` unit centroids (faiss's rule of thumb is 4 to 16
   sqrt(N)); every row belongs to its ``spill`` nearest lists (blocked matrix products,
   torch), as a candidate and as a query. With one list a row near the border between two
   misses the part of its identity across it, and the lists' centroids are too alike in
   2048 dimensions to say which neighbouring list holds it (at N = 200,000 with one list
   a row, 3% of the rows found almost none of their identity and were DBSCAN outliers);
3. **probes, list by list**: the rows of a list are searched together against the rows of
   the ``nprobe`` lists whose centroids are nearest to their list's (their own first),
   more where those hold fewer than k rows;
4. **search**: one dense product per list (its rows x its candidates' rows, BLAS), with the
   exact path's formula ``||a||^2 + ||b||^2 - 2 a.b`` in float32 (clamped at 0,
   ``d(p, p) = 0``), ordered by (distance, index) like the exact path; a row's results from
   its lists are merged (each neighbour once) and the first k kept. A neighbour found here
   has the exact distance; only the ones in lists not searched are missed;
5. **row maxima**: the largest distance from each row to the far rows (per list, the row
   farthest from its centroid in the list space: at most :data:`MAX_FAR_ROWS`, those
   farthest first; a lower bound of the true maximum, never below the k-th distance);
6. **weak rows, again**: a row whose similarity to its nearest centroid stands out from its
   similarities to all of them by no more than the largest of ``nlist`` random draws would
   (:data:`WEAK_MARGIN`) has no list that stands for it (its person was not in the k-means
   sample, so its images were spread over lists by their noise). The weak rows are searched
   again among themselves with lists of their own (steps 1-4), up to :data:`MAX_LEVELS`
   levels, and the last :data:`EXACT_REST` or fewer exactly; each row keeps the k nearest of
   all its searches. On the 2048-d synthetic features the weak rows are 13% at N = 200,000
   (57,248 sample rows for 11,764 identities), and without this step 2-7% of the rows found
   almost none of their identity.

Why not faiss's own IVF search or HNSW: every sample is a query, and at d = 2048 a
per-query scan reads 8 KB per candidate from memory, while a list's rows searched together
against their candidates make one matrix product at BLAS speed, whose distances are exact;
HNSW's build is itself N searches that hop between single vectors. faiss does the k-means
(its spherical k-means is seeded and multi-threaded). ``nprobe = nlist`` makes the search
exhaustive, so tests can check it against the exact path.

Memory: the features (not copied), the sample, the (N, k) keys, and one list's product at a
time (rows x candidates x 4 bytes).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MissingDependencyError
from .settings import NeighborSettings
from .topk import _LOW, _SENTINEL, _encode, _knn_torch, sq_norms

__all__ = ["approximate_knn", "faiss_available", "list_space", "require_faiss", "resolve_neighbors"]

_COARSE_ROWS = 8192  # rows per block of the N x nlist assignment pass
_MERGE_ROWS = 65_536  # rows per block of the merge of a row's results from its lists
#: A row is weak when its similarity to its nearest centroid stands less than
#: sqrt(2 ln nlist) + WEAK_MARGIN standard deviations above its mean similarity to all of
#: them, about what the largest of nlist random similarities reaches: no list stands for it
#: (step 6).
WEAK_MARGIN = 2.0
#: Levels of lists at most (step 6), and the weak rows left that are searched exactly.
MAX_LEVELS = 4
EXACT_REST = 30_000
#: Rows whose distances bound each row's maximum (an N x this product).
MAX_FAR_ROWS = 2048
#: A leading principal component is projected out of the list space when its eigenvalue is
#: more than GAP times the next one's (the last such gap among the first MAX_DROP).
GAP = 3.0
MAX_DROP = 64
#: Most rows in the k-means sample (and the covariance's): 16 per list at N = 1,000,000.
MAX_TRAIN = 65_536
_SEARCH_ROWS = 2048  # rows of a list per product (a bound on its memory)


def require_faiss(what: str = "pseudo.neighbors='approximate'"):
    """The faiss module, or a :class:`~adaptreid.errors.MissingDependencyError` saying how
    to install it and how to do without."""
    try:
        import faiss
    except ImportError as err:
        raise MissingDependencyError(
            f"{what} needs faiss, an optional dependency: pip install 'adaptreid[faiss]' (or "
            "faiss-cpu); pseudo.neighbors='exact' needs nothing else"
        ) from err
    return faiss


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_neighbors(
    settings: NeighborSettings | str | None, n: int
) -> tuple[NeighborSettings, Literal["exact", "approximate"]]:
    """``(settings, "exact" | "approximate")``: how N = ``n`` samples are searched.

    ``settings``: a :class:`NeighborSettings`, a mode name, or None (the defaults: exact).
    ``approximate`` without faiss is an error; ``auto`` above ``auto_min_n`` without faiss
    warns and falls back to ``exact``.
    """
    if settings is None:
        settings = NeighborSettings()
    elif isinstance(settings, str):
        settings = NeighborSettings(mode=settings)
    elif not isinstance(settings, NeighborSettings):
        raise TypeError(
            f"neighbors must be a NeighborSettings, 'exact', 'approximate' or 'auto', "
            f"got {settings!r}"
        )
    if not settings.approximate(n):
        return settings, "exact"
    if settings.mode == "approximate":
        require_faiss()
        return settings, "approximate"
    if faiss_available():
        return settings, "approximate"
    warnings.warn(
        f"pseudo.neighbors='auto' would search the {n} samples' neighbours approximately "
        f"(from {settings.auto_min_n} up) but faiss is not installed: computing the exact "
        "neighbours instead (O(N^2 d), much slower at this size). pip install "
        "'adaptreid[faiss]', or set pseudo.neighbors='exact' to silence this",
        stacklevel=3,
    )
    return settings, "exact"


# --------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------


def list_space(sample: torch.Tensor, drop: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, basis)``: the space the lists are built in is ``x - mean`` with the
    components in the columns of ``basis`` (d, m) projected out, then L2-normalised.

    ``drop``: how many leading principal components of ``sample`` to project out; -1: those
    before the last eigenvalue gap larger than :data:`GAP` among the first :data:`MAX_DROP`
    (none if there is no such gap). Step 1 of the module docstring."""
    sample = sample.to(torch.float32)
    mean = sample.mean(0)
    if drop == 0 or sample.shape[0] < 2:
        return mean, torch.zeros((sample.shape[1], 0))
    c = sample - mean  # centred, so float32 keeps the covariance's leading eigenvalues
    cov = c.T @ c / (sample.shape[0] - 1)
    del c
    ev, vec = torch.linalg.eigh(cov)  # ascending
    ev, vec = ev.flip(0), vec.flip(1)
    if drop < 0:
        top = ev[: MAX_DROP + 1].clamp(min=0)
        ratio = top[:-1] / top[1:].clamp(min=1e-30)
        gaps = torch.nonzero(ratio > GAP).flatten()
        drop = int(gaps[-1]) + 1 if len(gaps) else 0
    drop = min(drop, sample.shape[1] - 1)
    return mean, vec[:, :drop].contiguous()


def _to_list_space(x: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    z = x - mean
    if basis.shape[1]:
        z -= (z @ basis) @ basis.T
    return z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _train_lists(z: torch.Tensor, nlist: int, st: NeighborSettings, faiss) -> torch.Tensor:
    """``nlist`` unit centroids: faiss's spherical k-means of the (list-space) sample."""
    m, d = z.shape
    km = faiss.Kmeans(
        d,
        nlist,
        niter=st.niter,
        seed=st.seed,
        spherical=True,
        max_points_per_centroid=m,  # we sampled already: faiss must not subsample again
        min_points_per_centroid=1,  # and must not warn about a small sample
        verbose=False,
    )
    km.train(np.ascontiguousarray(z.numpy(), dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))


def _assign(x: torch.Tensor, rows: torch.Tensor, mean, basis, cen: torch.Tensor, spill: int):
    """For the given rows (global indices): each one's ``spill`` nearest lists (nearest unit
    centroids in the list space, the nearest first), whether it is *weak* (its nearest
    centroid no more similar than the largest of as many random ones would be: see
    :data:`WEAK_MARGIN`; step 6 of the module docstring) and, per list, its row farthest
    from the centroid among the rows it is nearest to (-1 for an empty list) and that
    row's cosine."""
    n, nlist = len(rows), cen.shape[0]
    spill = min(spill, nlist)
    # the largest of nlist standard normal draws is about sqrt(2 ln nlist) (+ a margin)
    weak_z = math.sqrt(2.0 * math.log(max(nlist, 2))) + WEAK_MARGIN
    assign = torch.empty((n, spill), dtype=torch.int64)
    weak = torch.zeros(n, dtype=torch.bool)
    far_cos = torch.full((nlist,), 2.0)
    far_idx = torch.full((nlist,), -1, dtype=torch.int64)
    for s in range(0, n, _COARSE_ROWS):
        e = min(n, s + _COARSE_ROWS)
        sim = _to_list_space(x[rows[s:e]], mean, basis) @ cen.T
        top, a = torch.topk(sim, spill, dim=1, sorted=True)
        assign[s:e] = a
        if nlist > 1:
            sd, mu = torch.std_mean(sim, dim=1)
            weak[s:e] = top[:, 0] - mu < weak_z * sd
        best, a = top[:, 0], a[:, 0]
        # per list, the member with the smallest cosine to its centroid (lowest index on ties)
        order = torch.argsort(best, stable=True)  # ascending cosine: the farthest first
        lists, first = np.unique(a[order].numpy(), return_index=True)
        far, cos = rows[order[first] + s], best[order[first]]
        lists = torch.from_numpy(lists)
        better = cos < far_cos[lists]
        far_cos[lists[better]], far_idx[lists[better]] = cos[better], far[better]
    return assign, weak, far_idx, far_cos


def _probe_lists(cen: torch.Tensor, sizes: torch.Tensor, nprobe: int, need: int) -> list:
    """Per list, the lists its rows are searched against: the ``nprobe`` whose centroids are
    nearest its own (itself first), more while they hold fewer than ``need`` rows."""
    nlist = cen.shape[0]
    sim = cen @ cen.T
    sim.fill_diagonal_(3.0)  # itself first, whatever the rounding
    width = min(nlist, max(nprobe, 1) * 4)
    top = torch.topk(sim, width, dim=1, sorted=True).indices
    probes = []
    for lst in range(nlist):
        cand = top[lst]
        counts = torch.cumsum(sizes[cand], 0)
        p = nprobe
        if counts[min(p, width) - 1] < need:
            if counts[-1] < need:  # rare: the whole ranking of lists
                cand = torch.argsort(sim[lst], descending=True, stable=True)
                counts = torch.cumsum(sizes[cand], 0)
            p = int(torch.searchsorted(counts, torch.tensor(need))) + 1
        probes.append(cand[: max(nprobe, p)])
    return probes


def _search(x, xn, rows, assign, probes, k: int, verbose: bool) -> tuple[torch.Tensor, int]:
    """(len(rows), k) packed keys: each row's k nearest among the rows of the lists probed
    from each of its lists, by the exact path's distance, sorted by (distance, index); and
    the number of distances computed. ``rows``: global indices; ``assign``: their lists."""
    n, spill = assign.shape
    nlist = len(probes)
    flat = assign.reshape(-1)
    order = torch.argsort(flat, stable=True) // spill  # positions in rows, list by list
    starts = torch.zeros(nlist + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum(torch.bincount(flat, minlength=nlist), 0)
    members = [order[starts[i] : starts[i + 1]] for i in range(nlist)]
    found = torch.full((n, spill, k), _SENTINEL, dtype=torch.int64)
    pairs = 0
    desc = "approximate neighbours"
    for lst in tqdm(range(nlist), desc=desc, disable=not verbose, leave=False):
        pos = members[lst]
        if not len(pos):
            continue
        slot = (assign[pos] == lst).to(torch.int64).argmax(dim=1)
        # ascending index, each row once: ties ordered as the exact path
        cols = rows[torch.unique(torch.cat([members[j] for j in probes[lst].tolist()]))]
        kk = min(k, len(cols))
        pairs += len(pos) * len(cols)
        xc, cn = x[cols].T.contiguous(), xn[cols].unsqueeze(0)
        for s in range(0, len(pos), _SEARCH_ROWS):
            p = pos[s : s + _SEARCH_ROWS]
            r = rows[p]
            d = torch.addmm(cn, x[r], xc, beta=1.0, alpha=-2.0)
            d += xn[r].unsqueeze(1)
            d.clamp_(min=0.0)
            d[cols.unsqueeze(0) == r.unsqueeze(1)] = 0.0  # d(p, p) = 0, as the exact path
            key = _encode(d, cols.unsqueeze(0).expand_as(d))
            top = torch.topk(key, kk, dim=1, largest=False, sorted=True).values
            found[p, slot[s : s + _SEARCH_ROWS], :kk] = top
    return _merge_blocks(found.view(n, spill * k), k), pairs


def _merge_blocks(keys: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`_merge` in blocks of rows (its temporaries are 5x its input)."""
    out = torch.empty((keys.shape[0], k), dtype=torch.int64)
    for s in range(0, keys.shape[0], _MERGE_ROWS):
        out[s : s + _MERGE_ROWS] = _merge(keys[s : s + _MERGE_ROWS], k)
    return out


def _merge(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the k smallest keys with each index once (a row searched from two lists
    finds its neighbours twice, their distances from two products: the smaller is kept)."""
    keys = torch.sort(keys, dim=1).values
    if keys.shape[1] == k:
        return keys
    # a stable sort by index keeps the key order among equal indices: all but the first of
    # each run are duplicates
    by_idx, perm = torch.sort(keys & _LOW, dim=1, stable=True)
    dup = torch.zeros_like(by_idx, dtype=torch.bool)
    dup[:, 1:] = by_idx[:, 1:] == by_idx[:, :-1]
    keys[torch.zeros_like(dup).scatter_(1, perm, dup)] = _SENTINEL
    return torch.sort(keys, dim=1).values[:, :k]


def _far_rows(far_idx: torch.Tensor, far_cos: torch.Tensor) -> torch.Tensor:
    """The distinct far rows, at most :data:`MAX_FAR_ROWS`, those farthest from their
    centroid first."""
    ok = far_idx >= 0
    far_idx, far_cos = far_idx[ok], far_cos[ok]
    order = torch.argsort(far_cos, stable=True)
    rows = far_idx[order]
    _, first = np.unique(rows.numpy(), return_index=True)
    return rows[torch.from_numpy(np.sort(first))[:MAX_FAR_ROWS]]


def _row_max(x, xn, far: torch.Tensor) -> torch.Tensor:
    """max over the far rows of each row's squared distance (blocked products)."""
    xf, fn = x[far], xn[far]
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float32)
    for s in range(0, n, _COARSE_ROWS):
        e = min(n, s + _COARSE_ROWS)
        d = torch.addmm(fn.unsqueeze(0), x[s:e], xf.T, beta=1.0, alpha=-2.0)
        d += xn[s:e].unsqueeze(1)
        out[s:e] = d.amax(dim=1).clamp_(min=0.0)
    return out


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------


def approximate_knn(
    x: torch.Tensor, k: int, settings: NeighborSettings | None = None, *, verbose: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Approximate k nearest neighbours of every row of ``x`` among the rows of ``x``, with
    exact distances (module docstring for the algorithm).

    Args:
        x: (N, d) float32 features (a CPU tensor; see :func:`adaptreid.pseudo.topk.as_features`).
        k: neighbours per row, the row itself included (capped at N).
        settings: ``nlist``, ``nprobe``, ``drop_components``, the k-means sample and seed
            (:class:`~adaptreid.pseudo.settings.NeighborSettings`; its ``mode`` is not read).
        verbose: progress bar of the search.

    Returns:
        ``(keys, rowmax, info)``: (N, k) int64 keys packing (squared distance, index) as the
        exact path's (:func:`adaptreid.pseudo.topk.decode_keys`), each row sorted by
        (distance, index); (N,) float32 row maxima (lower bounds); ``info``: ``nlist``,
        ``nprobe``, ``dropped`` (components projected out of the list space),
        ``largest_list``, ``pairs`` (distances computed, as a share of N^2), ``far_rows``
        and ``seconds`` per step.
    """
    faiss = require_faiss()
    st = settings or NeighborSettings()
    x = x.detach().to("cpu", torch.float32).contiguous()
    n = x.shape[0]
    k = min(int(k), n)
    xn = sq_norms(x)
    rows = torch.arange(n)
    keys = None
    levels = []
    for level in range(MAX_LEVELS):
        if level and len(rows) <= EXACT_REST:
            t = time.perf_counter()
            sub = _exact_among(x, rows, k)
            keys[rows] = _merge_blocks(torch.cat([keys[rows], sub], dim=1), k)
            sec = {"exact": time.perf_counter() - t}
            levels.append({"rows": len(rows), "exact": True, "pairs": 1.0, "seconds": sec})
            rows = rows[:0]
            break
        sub, weak, far, info = _level(x, xn, rows, k, st, faiss, verbose)
        if keys is None:
            keys, far_rows = sub, far
        else:
            keys[rows] = _merge_blocks(torch.cat([keys[rows], sub], dim=1), k)
        levels.append(info)
        rows = rows[weak]
        if len(rows) <= k:  # too few to search among themselves
            break
    t = time.perf_counter()
    rowmax = _row_max(x, xn, far_rows)
    kth = (keys[:, -1] >> 32).to(torch.int32).view(torch.float32)
    rowmax = torch.maximum(rowmax, kth)  # never below a distance the row has
    first = levels[0]
    info = {
        "nlist": first["nlist"],
        "nprobe": first["nprobe"],
        "spill": first["spill"],
        "dropped": first["dropped"],
        "largest_list": first["largest_list"],
        "pairs": sum(lv.get("pairs", 0.0) * lv["rows"] ** 2 for lv in levels) / float(n) ** 2,
        "far_rows": len(far_rows),
        "weak_left": len(rows),
        "levels": levels,
        "seconds": {
            **first["seconds"],
            "weak_rows": sum(sum(lv["seconds"].values()) for lv in levels[1:]),
            "row_max": time.perf_counter() - t,
        },
    }
    return keys, rowmax, info


def _level(x, xn, rows, k, st: NeighborSettings, faiss, verbose):
    """Steps 1-4 on the given rows (global indices): their keys among themselves, which of
    them are weak, the far rows, and this level's figures."""
    n = len(rows)
    nlist = st.lists(n)
    nprobe = st.probes(nlist)
    sec = {}
    t = time.perf_counter()
    m = min(n, st.train_per_list * nlist, MAX_TRAIN)
    rng = np.random.default_rng(st.seed)
    pick = rows if m == n else rows[torch.from_numpy(np.sort(rng.choice(n, m, replace=False)))]
    sample = x[pick]
    mean, basis = list_space(sample, st.drop_components)
    sec["list_space"] = time.perf_counter() - t

    t = time.perf_counter()
    cen = _train_lists(_to_list_space(sample, mean, basis), nlist, st, faiss)
    del sample
    sec["train"] = time.perf_counter() - t

    t = time.perf_counter()
    assign, weak, far_idx, far_cos = _assign(x, rows, mean, basis, cen, st.spill)
    sizes = torch.bincount(assign.reshape(-1), minlength=nlist)  # members, spilled included
    probes = _probe_lists(cen, sizes, nprobe, k)
    sec["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    keys, pairs = _search(x, xn, rows, assign, probes, k, verbose)
    sec["search"] = time.perf_counter() - t
    info = {
        "rows": n,
        "nlist": nlist,
        "nprobe": nprobe,
        "spill": int(assign.shape[1]),
        "dropped": int(basis.shape[1]),
        "largest_list": int(sizes.max()),
        "pairs": pairs / float(n) ** 2,
        "weak": int(weak.sum()),
        "seconds": sec,
    }
    return keys, weak, _far_rows(far_idx, far_cos), info


def _exact_among(x, rows, k: int) -> torch.Tensor:
    """Exact top-k keys of the given rows among themselves, with global indices."""
    kk = min(k, len(rows))
    local, _ = _knn_torch(x[rows], None, kk, 2048, False)
    dist = (local >> 32) << 32
    glob = dist | rows[local & _LOW]
    if kk < k:
        pad = torch.full((len(rows), k - kk), _SENTINEL, dtype=torch.int64)
        glob = torch.cat([glob, pad], dim=1)
    return glob
