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
   (BENCHMARKS.md, "Approximate neighbours"): without the projection the lists are
   camera-bound and uneven (at N = 20,000, 566 lists, the largest 1,358 rows) and half the
   true same-identity neighbours are missed whatever the probes; with it the largest list
   has 91 rows and the same-identity share of the first 16 neighbours is the exact path's.
   Features that are camera-normalised already (eq. 4) have no such gap and nothing is
   dropped. ``drop_components`` fixes the number instead;
2. **lists**: spherical k-means (faiss, ``niter`` iterations, seeded) of the sample in that
   space into ``nlist = round(4 sqrt(N))`` unit centroids (faiss's rule of thumb is 4 to 16
   sqrt(N)), every row assigned to its nearest (blocked matrix products, torch);
3. **probes, list by list**: the rows of a list are searched together against the rows of
   the ``nprobe`` lists whose centroids are nearest to their list's (their own first),
   more where those hold fewer than k rows;
4. **search**: one dense product per list (its rows x its candidates' rows, BLAS), with the
   exact path's formula ``||a||^2 + ||b||^2 - 2 a.b`` in float32 (clamped at 0,
   ``d(p, p) = 0``), ordered by (distance, index) like the exact path, the first k kept.
   A neighbour found here has the exact distance; only the ones in lists not probed are
   missed;
5. **row maxima**: the largest distance from each row to the far rows (per list, the row
   farthest from its centroid in the list space: at most :data:`MAX_FAR_ROWS`, those
   farthest first; a lower bound of the true maximum, never below the k-th distance).

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

import time
import warnings
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MissingDependencyError
from .settings import NeighborSettings
from .topk import _encode, sq_norms

__all__ = ["approximate_knn", "faiss_available", "list_space", "require_faiss", "resolve_neighbors"]

_COARSE_ROWS = 8192  # rows per block of the N x nlist assignment pass
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


def _assign(x: torch.Tensor, mean, basis, cen: torch.Tensor):
    """Each row's list (nearest unit centroid in the list space) and, per list, its row
    farthest from the centroid (-1 for an empty list) and that row's cosine."""
    n, nlist = x.shape[0], cen.shape[0]
    assign = torch.empty(n, dtype=torch.int64)
    far_cos = torch.full((nlist,), 2.0)
    far_idx = torch.full((nlist,), -1, dtype=torch.int64)
    for s in range(0, n, _COARSE_ROWS):
        e = min(n, s + _COARSE_ROWS)
        sim = _to_list_space(x[s:e], mean, basis) @ cen.T
        best, a = sim.max(dim=1)
        assign[s:e] = a
        # per list, the member with the smallest cosine to its centroid (lowest index on ties)
        order = torch.argsort(best, stable=True)  # ascending cosine: the farthest first
        lists, first = np.unique(a[order].numpy(), return_index=True)
        rows, cos = order[first] + s, best[order[first]]
        lists = torch.from_numpy(lists)
        better = cos < far_cos[lists]
        far_cos[lists[better]], far_idx[lists[better]] = cos[better], rows[better]
    return assign, far_idx, far_cos


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


def _search(x, xn, assign, sizes, probes, k: int, verbose: bool) -> torch.Tensor:
    """(N, k) packed keys: each row's k nearest among its lists' probed rows, by the exact
    path's distance, sorted by (distance, index)."""
    n = x.shape[0]
    nlist = len(probes)
    order = torch.argsort(assign, stable=True)
    starts = torch.zeros(nlist + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum(sizes, 0)
    members = [order[starts[i] : starts[i + 1]] for i in range(nlist)]
    keys = torch.empty((n, k), dtype=torch.int64)
    for lst in tqdm(range(nlist), desc="approximate neighbours", disable=not verbose, leave=False):
        rows = members[lst]
        if not len(rows):
            continue
        cols = torch.cat([members[j] for j in probes[lst].tolist()])
        cols = torch.sort(cols).values  # ascending index: ties ordered as the exact path
        xc, cn = x[cols].T.contiguous(), xn[cols].unsqueeze(0)
        for s in range(0, len(rows), _SEARCH_ROWS):
            r = rows[s : s + _SEARCH_ROWS]
            d = torch.addmm(cn, x[r], xc, beta=1.0, alpha=-2.0)
            d += xn[r].unsqueeze(1)
            d.clamp_(min=0.0)
            d[cols.unsqueeze(0) == r.unsqueeze(1)] = 0.0  # d(p, p) = 0, as the exact path
            key = _encode(d, cols.unsqueeze(0).expand_as(d))
            keys[r] = torch.topk(key, k, dim=1, largest=False, sorted=True).values
    return keys


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
    nlist = st.lists(n)
    nprobe = st.probes(nlist)
    xn = sq_norms(x)
    sec = {}
    t = time.perf_counter()
    m = min(n, st.train_per_list * nlist, MAX_TRAIN)
    rng = np.random.default_rng(st.seed)
    sample = x if m == n else x[torch.from_numpy(np.sort(rng.choice(n, m, replace=False)))]
    mean, basis = list_space(sample, st.drop_components)
    sec["list_space"] = time.perf_counter() - t

    t = time.perf_counter()
    cen = _train_lists(_to_list_space(sample, mean, basis), nlist, st, faiss)
    del sample
    sec["train"] = time.perf_counter() - t

    t = time.perf_counter()
    assign, far_idx, far_cos = _assign(x, mean, basis, cen)
    sizes = torch.bincount(assign, minlength=nlist)
    probes = _probe_lists(cen, sizes, nprobe, k)
    sec["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = _search(x, xn, assign, sizes, probes, k, verbose)
    sec["search"] = time.perf_counter() - t
    pairs = sum(int(sizes[i]) * int(sizes[p].sum()) for i, p in enumerate(probes))

    t = time.perf_counter()
    far = _far_rows(far_idx, far_cos)
    rowmax = _row_max(x, xn, far)
    kth = (keys[:, -1] >> 32).to(torch.int32).view(torch.float32)
    rowmax = torch.maximum(rowmax, kth)  # never below a distance the row has
    sec["row_max"] = time.perf_counter() - t
    info = {
        "nlist": nlist,
        "nprobe": nprobe,
        "dropped": int(basis.shape[1]),
        "largest_list": int(sizes.max()),
        "pairs": pairs / float(n) ** 2,
        "far_rows": len(far),
        "seconds": sec,
    }
    return keys, rowmax, info
