"""Approximate k nearest neighbours for the k-reciprocal encoding at large N: faiss IVF-Flat
candidates, exact distances on the candidates.

The k-reciprocal encoding (Zhong et al., CVPR 2017, section 3) needs, per sample p, its
ranking N(p, k1 + 1) (eq. 4-6) and the row maximum of the original distance (the
normalisation before the Gaussian kernel of eq. 7). The exact path
(:mod:`adaptreid.pseudo.topk`) computes all N^2 / 2 distances: O(N^2 d), 480 s at
N = 200,000 on 2 cores and about 3 hours at N = 1,000,000. This path:

1. **lists**: spherical k-means (faiss, ``niter`` iterations, seeded) of a sample of
   ``train_per_list * nlist`` rows into ``nlist`` unit centroids, ``nlist = round(16
   sqrt(N))`` (faiss's rule of thumb is 4 to 16 sqrt(N)). Measured on the 2048-d synthetic
   re-ID features of ``benchmarks/topk_approx.py`` (BENCHMARKS.md, "Approximate
   neighbours"): with 4 sqrt(N) lists each list mixes several identities, k-means splits
   them by camera and leaves a few huge lists near every row, so identity neighbours land
   in other lists and the search scanned more than the exact path computes (20,000 rows:
   recall 0.56 at nprobe 8, slower than exact); lists about the size of an identity
   (16 sqrt(N): 9 rows at N = 20,000, 28 at 200,000) hold it together. Unit centroids (the
   cosine) remove the small-norm "hub" lists that plain k-means grows;
2. **coarse pass** (torch, blocked matrix products): each row's ``nprobe`` nearest centroids
   (its list is the first) and, per centroid, the row farthest from it;
3. **search**: faiss ``IndexIVFFlat`` filled with those lists (``add_core``) and searched
   with those probes (``search_preassigned``), rows in list order (consecutive queries read
   the same lists: cache reuse), ``k + 8`` candidates each;
4. **exact distances on the candidates**: recomputed with the exact path's formula
   ``||a||^2 + ||b||^2 - 2 a.b`` (clamped at 0, ``d(p, p) = 0``), ordered by (distance,
   index) like the exact path, the first k kept. A row with fewer than k candidates (tiny
   lists) gets its exact top-k;
5. **row maxima**: the largest distance from each row to the far rows of step 2 (at most
   2048, those farthest from their centroid first; a lower
   bound of the true maximum, exact for the row it names: the farthest row from p lies,
   typically, among the farthest from p's centroid and its neighbours').

Why IVF-Flat and not HNSW: with every sample a query, the build and the search cost the same
order for HNSW (each insertion is a search, sequential in parts), while IVF's build is a
k-means of a sample plus one blocked matrix-product pass (BLAS speed); IVF's scan reads whole
lists contiguously (d = 2048: 8 KB a vector), HNSW hops randomly between single vectors; the
IVF result is deterministic (HNSW's parallel build is not), and ``nprobe = nlist`` makes it
exhaustive, so tests can check it against the exact path. IVF-Flat also returns exact
distances for what it finds, so recomputing them costs little and only sets the tie order and
rounding to the exact path's.

Memory: faiss keeps its own copy of the features in its lists (4 N d bytes, 8.2 GB at
N = 1,000,000 and d = 2048; freed after the search) plus O(N (k + nprobe)) tables;
``codes="fp16"`` (IVF-SQfp16) halves the copy: faiss then ranks by half-precision
distances, and the exact recomputation on the candidates is what keeps the result exact.
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
from .topk import _SENTINEL, _block_topk, _encode, sq_norms

__all__ = ["approximate_knn", "faiss_available", "require_faiss", "resolve_neighbors"]

#: faiss returns this many candidates beyond k; they are re-ordered by the exact distances.
CANDIDATE_MARGIN = 8
_COARSE_ROWS = 8192  # rows per block of the N x nlist coarse pass
_SEARCH_ROWS = 16384  # queries per faiss call
_EXACT_ROWS = 256  # rows per batch of candidate distances (256 x (k + 8) x d floats)
_FALLBACK_ROWS = 64
#: Rows whose distances bound each row's maximum (an N x this product).
MAX_FAR_ROWS = 2048  # rows per block of a full exact row (rows short of candidates)


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


def _train_lists(xs: np.ndarray, nlist: int, st: NeighborSettings, faiss) -> np.ndarray:
    """``nlist`` k-means centroids of a seeded sample of ``train_per_list * nlist`` rows."""
    n, d = xs.shape
    m = min(n, st.train_per_list * nlist)
    rng = np.random.default_rng(st.seed)
    sample = xs if m == n else xs[np.sort(rng.choice(n, m, replace=False))]
    km = faiss.Kmeans(
        d,
        nlist,
        niter=st.niter,
        seed=st.seed,
        spherical=True,  # unit centroids: no small-norm "hub" list that every row is near
        max_points_per_centroid=m,  # we sampled already: faiss must not subsample again
        min_points_per_centroid=1,  # and must not warn about a small sample
        verbose=False,
    )
    km.train(np.ascontiguousarray(sample))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _coarse(x: torch.Tensor, xn: torch.Tensor, cen: torch.Tensor, nprobe: int):
    """Each row's ``nprobe`` nearest centroids (sorted, with their squared distances) and,
    per centroid, the row farthest from it."""
    n, nlist = x.shape[0], cen.shape[0]
    cn = sq_norms(cen)
    probes = torch.empty((n, nprobe), dtype=torch.int64)
    pdist = torch.empty((n, nprobe), dtype=torch.float32)
    far_val = torch.full((nlist,), -1.0)
    far_idx = torch.zeros(nlist, dtype=torch.int64)
    for s in range(0, n, _COARSE_ROWS):
        e = min(n, s + _COARSE_ROWS)
        d = torch.addmm(cn.unsqueeze(0), x[s:e], cen.T, beta=1.0, alpha=-2.0)
        d += xn[s:e].unsqueeze(1)
        d.clamp_(min=0.0)
        v, i = torch.topk(d, nprobe, dim=1, largest=False, sorted=True)
        probes[s:e], pdist[s:e] = i, v
        mv, mi = d.max(dim=0)
        better = mv > far_val
        far_val = torch.where(better, mv, far_val)
        far_idx = torch.where(better, mi + s, far_idx)
    return probes, pdist, far_idx, far_val


def _far_rows(far_idx: torch.Tensor, far_val: torch.Tensor) -> torch.Tensor:
    """The distinct far rows, at most :data:`MAX_FAR_ROWS`: those farthest from their
    centroid first (the most extreme rows)."""
    order = torch.argsort(far_val, descending=True, stable=True)
    rows = far_idx[order]
    _, first = np.unique(rows.numpy(), return_index=True)
    return rows[torch.from_numpy(np.sort(first))[:MAX_FAR_ROWS]]


def _search(xs, cen, probes, pdist, kc: int, codes: str, faiss, verbose: bool):
    """faiss IVF candidates (IVF-Flat, or IVF-SQfp16 with ``codes="fp16"``): (N, kc)
    indices, -1 where fewer were found; and the order of the rows by list."""
    n, d = xs.shape
    nlist, nprobe = cen.shape[0], probes.shape[1]
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(cen)
    if codes == "fp16":
        qtype = faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qtype, faiss.METRIC_L2)
        index.train(cen)  # the lists are set (the quantizer holds nlist centroids); fp16
        # itself learns nothing: this only marks the index trained
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    assign = np.ascontiguousarray(probes[:, 0].numpy(), dtype=np.int64)
    # keep every array passed as a pointer referenced until the call returns
    index.add_core(n, faiss.swig_ptr(xs), None, faiss.swig_ptr(assign))
    index.nprobe = nprobe
    order = np.argsort(assign, kind="stable")  # consecutive queries probe the same lists
    pr, pd = probes.numpy(), pdist.numpy()
    cand = np.empty((n, kc), dtype=np.int64)
    starts = range(0, n, _SEARCH_ROWS)
    for s in tqdm(starts, desc="approximate neighbours: search", disable=not verbose, leave=False):
        rows = order[s : s + _SEARCH_ROWS]
        _, ids = index.search_preassigned(
            np.ascontiguousarray(xs[rows]),
            kc,
            np.ascontiguousarray(pr[rows]),
            np.ascontiguousarray(pd[rows]),
        )
        cand[rows] = ids
    del index, quantizer
    return cand, order


def _exact_on_candidates(x, xn, cand: np.ndarray, k: int, order: np.ndarray):
    """(N, k) packed keys of the k nearest candidates by the exact path's distance, and the
    rows with fewer than k candidates. Rows are taken in ``order`` (list order: consecutive
    rows share candidates, which stay in cache); the candidates' rows are gathered into one
    reused buffer (fresh block-sized temporaries cost more than the products)."""
    n, d = x.shape
    kc = cand.shape[1]
    keys = torch.empty((n, k), dtype=torch.int64)
    short = []
    buf = torch.empty((_EXACT_ROWS * kc, d), dtype=torch.float32)
    for s in range(0, n, _EXACT_ROWS):
        rows = torch.from_numpy(order[s : s + _EXACT_ROWS])
        m = len(rows)
        c = torch.from_numpy(cand[order[s : s + _EXACT_ROWS]])
        valid = c >= 0
        cc = c.clamp(min=0)
        xc = buf[: m * kc]
        torch.index_select(x, 0, cc.reshape(-1), out=xc)
        dot = torch.bmm(xc.view(m, kc, d), x[rows].unsqueeze(2)).squeeze(2)
        dist = (xn[rows].unsqueeze(1) + xn[cc]) - 2.0 * dot  # symmetric in (a, b)
        dist.clamp_(min=0.0)
        dist[cc == rows.unsqueeze(1)] = 0.0  # d(p, p) = 0, as the exact path
        key = _encode(dist, cc)
        key[~valid] = _SENTINEL
        keys[rows] = torch.sort(key, dim=1).values[:, :k]
        short.append(rows[valid.sum(1) < k])
    return keys, torch.cat(short) if short else torch.zeros(0, dtype=torch.int64)


def _exact_rows(x, xn, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k keys of the given rows against all rows (``d(p, p) = 0``)."""
    out = torch.empty((len(rows), k), dtype=torch.int64)
    for s in range(0, len(rows), _FALLBACK_ROWS):
        r = rows[s : s + _FALLBACK_ROWS]
        d = torch.addmm(xn.unsqueeze(0), x[r], x.T, beta=1.0, alpha=-2.0)
        d += xn[r].unsqueeze(1)
        d.clamp_(min=0.0)
        d[torch.arange(len(r)), r] = 0.0
        out[s : s + len(r)] = _block_topk(d, k, 0)
    return out


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
        settings: ``nlist``, ``nprobe``, the k-means sample and seed
            (:class:`~adaptreid.pseudo.settings.NeighborSettings`; its ``mode`` is not read).
        verbose: progress bar of the search.

    Returns:
        ``(keys, rowmax, info)``: (N, k) int64 keys packing (squared distance, index) as the
        exact path's (:func:`adaptreid.pseudo.topk.decode_keys`), each row sorted by
        (distance, index); (N,) float32 row maxima (lower bounds); ``info``: ``nlist``,
        ``nprobe``, ``far_rows``, ``rows_exact`` (rows short of candidates, searched
        exactly) and ``seconds`` per step.
    """
    faiss = require_faiss()
    st = settings or NeighborSettings()
    x = x.detach().to("cpu", torch.float32).contiguous()
    n = x.shape[0]
    k = min(int(k), n)
    nlist = st.lists(n)
    nprobe = st.probes(nlist)
    xs = x.numpy()
    xn = sq_norms(x)
    sec = {}
    t = time.perf_counter()
    cen = _train_lists(xs, nlist, st, faiss)
    sec["train"] = time.perf_counter() - t

    t = time.perf_counter()
    probes, pdist, far, far_val = _coarse(x, xn, torch.from_numpy(cen), nprobe)
    sec["coarse"] = time.perf_counter() - t

    t = time.perf_counter()
    kc = min(n, k + CANDIDATE_MARGIN)
    cand, order = _search(xs, cen, probes, pdist, kc, st.codes, faiss, verbose)
    del probes, pdist
    sec["search"] = time.perf_counter() - t

    t = time.perf_counter()
    keys, short = _exact_on_candidates(x, xn, cand, k, order)
    del cand, order
    if len(short):
        keys[short] = _exact_rows(x, xn, short, k)
    sec["exact_distances"] = time.perf_counter() - t

    t = time.perf_counter()
    far = _far_rows(far, far_val)
    rowmax = _row_max(x, xn, far)
    kth = (keys[:, -1] >> 32).to(torch.int32).view(torch.float32)
    rowmax = torch.maximum(rowmax, kth)  # never below a distance the row has
    sec["row_max"] = time.perf_counter() - t
    info = {
        "nlist": nlist,
        "nprobe": nprobe,
        "codes": st.codes,
        "far_rows": len(far),
        "rows_exact": len(short),
        "seconds": sec,
    }
    return keys, rowmax, info
