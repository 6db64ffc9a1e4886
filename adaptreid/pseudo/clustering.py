"""Clustering of target features into pseudo identities, behind one function: :func:`cluster`.

Three algorithms, as the two seed papers use them:

* **DBSCAN** (MSPLR, seed 000, section 3.3.2; ``eps`` and ``min_samples = 4``), either on the
  euclidean (or cosine) distance of features, or on a precomputed distance such as the sparse
  k-reciprocal Jaccard distance of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`.
  Outliers get the label -1.
* **k-means** (MSPLR section 3.3.1) with ``k = floor(N / 15)`` by default (eq. 1). No outliers.
  :func:`kmeans` (default, torch): greedy k-means++ seeding on a sample, then Lloyd iterations
  with blocked matrix products (CPU or GPU); ``kmeans_impl="sklearn"`` runs scikit-learn's
  ``KMeans`` instead (on 12,936 x 2048 features with k = 862 its k-means++ alone takes tens of
  seconds on two cores; see BENCHMARKS.md).
* **HDBSCAN** (PAST, seed 003, section 2.2) with ``min_cluster_size = S_min`` (10 in the
  paper), on a precomputed distance (the Jaccard distance: PAST's ranking score matrix, eq. 2,
  is each row of it sorted, which changes no neighbourhood) or on features. A *sparse*
  distance (missing entries = ``fill``) is clustered by :func:`hdbscan_sparse` at every N, in
  memory linear in the stored entries, with the labels scikit-learn gives on the densified
  matrix: the minimum spanning tree of the mutual-reachability graph is grown on the sparse
  graph exactly as scikit-learn's dense Prim's algorithm grows it (the pairs not stored are
  edges of weight ``fill``), and scikit-learn's own tree functions do the rest.

Exact and O(N x neighbours) in memory: euclidean DBSCAN never forms the N x N distance matrix.
:func:`radius_neighbors_graph` computes, in square blocks with a (GPU-capable) torch matrix
product, every pair within the radius - exactly: block distances only pick candidates with a
float32 rounding margin, and every candidate's distance is then recomputed in float64 from the
difference of the two rows, like a tree search would. scikit-learn's DBSCAN accepts that graph
as a sparse precomputed neighbourhood (``metric="precomputed"``): entries stored are
neighbours when ``<= eps`` (explicit zeros - duplicate images - included), missing entries are
never neighbours, and DBSCAN itself adds the diagonal, so every point counts itself, exactly as
in the dense case (``min_samples`` includes the point). The graph is also what
:func:`adaptreid.pseudo.labels.sweep_eps` computes once for a whole eps sweep.

Labels are always relabelled to ``0..C-1`` in order of first appearance (the cluster of the
lowest-index image is 0, and so on), with -1 for outliers: deterministic and independent of
the algorithm's internal numbering.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from adaptreid.errors import ConfigError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "HDBSCAN_DENSE_LIMIT",
    "KMeansResult",
    "cluster",
    "hdbscan_sparse",
    "kmeans",
    "kth_neighbor_distance",
    "radius_neighbors_graph",
    "relabel",
    "sparse_core_distances",
    "sparse_mutual_reachability_mst",
    "within_radius",
]

Method = Literal["dbscan", "kmeans", "hdbscan"]
Metric = Literal["euclidean", "cosine"]
HdbscanImpl = Literal["sparse", "dense"]
KMeansImpl = Literal["torch", "sklearn"]

#: Rows (and columns) of one distance block: 2048 x 2048 float32 = 16 MB.
DEFAULT_BLOCK_SIZE = 2048
#: Largest N for which ``hdbscan_impl="dense"`` (the comparison path) densifies a sparse
#: distance: scikit-learn's HDBSCAN works on a float64 N x N matrix, 8 N^2 bytes (1.35 GB at
#: N = 13k, 3.2 GB at N = 20k). The default sparse path has no limit.
HDBSCAN_DENSE_LIMIT = 20_000
#: Default cap on stored pairs of a radius graph (~1.6 GB): beyond it eps is almost surely far
#: too large (every image a neighbour of thousands), and a clear error beats running out of
#: memory.
DEFAULT_MAX_PAIRS = 100_000_000
_METHODS = ("dbscan", "kmeans", "hdbscan")
_METRICS = ("euclidean", "cosine")
_HDBSCAN_IMPLS = ("sparse", "dense")
_KMEANS_IMPLS = ("torch", "sklearn")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def relabel(labels) -> np.ndarray:
    """Labels renumbered ``0..C-1`` in order of first appearance; negatives become -1."""
    labels = np.asarray(labels).reshape(-1)
    out = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels >= 0
    if valid.any():
        _, first, inverse = np.unique(labels[valid], return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        out[valid] = rank[inverse.reshape(-1)]
    return out


def _as_tensor(features) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        x = features.detach()
    else:
        arr = np.asarray(features)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("features are empty (no image to cluster)")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    return x


def _as_numpy(features) -> np.ndarray:
    x = _as_tensor(features)
    return x.cpu().numpy()


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")


def _sorted_csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR with each row ordered by (value, column) - the layout scikit-learn expects of a
    precomputed neighbourhood graph - keeping explicit zeros."""
    order = np.lexsort((cols, data, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sp.csr_matrix((data[order], cols[order].astype(np.int32), indptr), shape=(n, n))


def within_radius(graph: sp.spmatrix, radius: float) -> sp.csr_matrix:
    """The entries of a sparse distance that are ``<= radius`` (explicit zeros kept).

    Row order is preserved, so a graph sorted by row values stays sorted.
    """
    graph = graph.tocsr()
    mask = graph.data <= radius
    if mask.all():
        return graph
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    indptr = np.zeros(graph.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[mask], minlength=graph.shape[0]), out=indptr[1:])
    return sp.csr_matrix((graph.data[mask], graph.indices[mask], indptr), shape=graph.shape)


# --------------------------------------------------------------------------------------------
# exact radius neighbourhood graph
# --------------------------------------------------------------------------------------------


def radius_neighbors_graph(
    features,
    radius: float,
    *,
    metric: Metric = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> sp.csr_matrix:
    """Every pair of rows within ``radius`` of each other, as a sparse distance graph.

    Exact (equal to thresholding the dense distance matrix computed in float64) and
    O(block_size^2 + stored pairs) in memory. Only the upper block triangle is computed and
    mirrored, so the graph is exactly symmetric.

    Args:
        features: (N, D) numpy array or tensor (a CUDA tensor is processed on its device).
        radius: keep pairs with distance ``<= radius``.
        metric: "euclidean" (``||a - b||``) or "cosine" (``1 - cos(a, b)``).
        block_size: rows per block of the matrix product.
        max_pairs: raise :class:`ConfigError` if more pairs than this fall within the radius.

    Returns:
        (N, N) CSR float64 matrix; the diagonal is stored (0), duplicates of a row are stored
        as explicit zeros, each row is ordered by distance. Missing entries are farther than
        ``radius``. Feed it to ``cluster(distance=graph, eps=e)`` with any ``e <= radius``.
    """
    _check_metric(metric)
    if not radius >= 0:
        raise ConfigError(f"radius must be >= 0, got {radius!r}")
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size!r}")
    block_size = int(block_size)
    x = _as_tensor(features)
    n, dim = x.shape
    inv_norm = None
    if metric == "cosine":
        # 1 - cos(a, b) = ||u - v||^2 / 2 for the unit rows u, v: threshold euclidean distances
        norm = x.to(torch.float64).norm(dim=1)
        inv_norm = 1.0 / torch.where(norm > 0, norm, torch.ones_like(norm))
        r_euc = math.sqrt(2.0 * min(float(radius), 2.0))
    else:
        r_euc = float(radius)
    x32 = x.to(torch.float32)
    if inv_norm is not None:
        x32 = x32 * inv_norm.to(torch.float32)[:, None]
    sq = (x32 * x32).sum(1)
    # float32 rounding margin of ||a||^2 + ||b||^2 - 2 a.b (a forward error bound of the dot
    # products, plus the rounding of float64 input to float32): candidates within it are
    # re-checked in float64, so no pair within the radius can be missed.
    rel = (2.0 * dim + 8.0) * 2.0**-24
    r2 = r_euc * r_euc

    pi_list, pj_list, total = [], [], 0
    for a in range(0, n, block_size):
        a1 = min(a + block_size, n)
        for b in range(a, n, block_size):
            b1 = min(b + block_size, n)
            s = sq[a:a1, None] + sq[None, b:b1]
            d2 = torch.addmm(s, x32[a:a1], x32[b:b1].T, beta=1.0, alpha=-2.0)
            cand = d2 <= r2 + rel * s + 1e-30
            if a == b:
                cand = torch.triu(cand)
            ii, jj = cand.nonzero(as_tuple=True)
            total += ii.numel()
            if total > max_pairs:
                raise ConfigError(
                    f"radius {radius} is too large for these features: more than {max_pairs} "
                    "pairs fall within it (images would be neighbours of thousands of "
                    "others); use a smaller eps"
                )
            pi_list.append((ii + a).cpu().numpy())
            pj_list.append((jj + b).cpu().numpy())
    pi = np.concatenate(pi_list).astype(np.int64)
    pj = np.concatenate(pj_list).astype(np.int64)

    # exact float64 distances of the candidates, from the row differences
    dist = np.empty(len(pi), dtype=np.float64)
    chunk = max(1, (16 << 20) // (8 * dim))  # <= 16 MB of float64 differences at once
    for s0 in range(0, len(pi), chunk):
        i = torch.from_numpy(pi[s0 : s0 + chunk]).to(x.device)
        j = torch.from_numpy(pj[s0 : s0 + chunk]).to(x.device)
        xi, xj = x[i].to(torch.float64), x[j].to(torch.float64)
        if inv_norm is not None:
            xi, xj = xi * inv_norm[i, None], xj * inv_norm[j, None]
        diff = xi - xj
        d = diff.pow(2).sum(1)
        d = d / 2.0 if metric == "cosine" else d.sqrt()
        dist[s0 : s0 + chunk] = d.cpu().numpy()
    keep = dist <= radius
    pi, pj, dist = pi[keep], pj[keep], dist[keep]
    off = pi != pj
    rows = np.concatenate([pi, pj[off]])
    cols = np.concatenate([pj, pi[off]])
    data = np.concatenate([dist, dist[off]])
    return _sorted_csr(rows, cols, data, n)


def kth_neighbor_distance(
    features=None, *, distance=None, k: int = 4, metric: Metric = "euclidean", fill: float = 1.0
) -> np.ndarray:
    """Distance of every point to its k-th nearest neighbour, the point itself counted first.

    This is the smallest DBSCAN ``eps`` at which the point is a core point with
    ``min_samples = k`` (scikit-learn counts the point in its own neighbourhood), so the
    median of these values is the eps at which half the images are core points: a
    data-driven starting value for eps.

    Args:
        features: (N, D) features, or
        distance: an (N, N) precomputed distance, dense or sparse (missing entries mean
            ``fill``, 1 for the Jaccard distance; the diagonal counts as 0).
        k: the neighbour rank (``min_samples``).
        metric: for features: "euclidean" or "cosine".
    """
    if distance is not None:
        n = distance.shape[0]
        k = min(int(k), n)
        if sp.issparse(distance):
            d = distance.tocsr().copy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
                d.setdiag(0.0)
            out = np.full(n, float(fill))
            counts = np.diff(d.indptr)
            for i in np.flatnonzero(counts >= k):
                row = d.data[d.indptr[i] : d.indptr[i + 1]]
                out[i] = np.partition(row, k - 1)[k - 1]
            return out
        d = np.array(distance, dtype=np.float64, copy=True)
        np.fill_diagonal(d, 0.0)
        return np.partition(d, k - 1, axis=1)[:, k - 1]
    if features is None:
        raise ConfigError("kth_neighbor_distance needs features or a distance")
    _check_metric(metric)
    from adaptreid.pseudo.kreciprocal import topk_neighbors

    x = _as_tensor(features).to(torch.float32)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    k = min(int(k), x.shape[0])
    sqd, _ = topk_neighbors(x, k)
    d2 = np.asarray(sqd[:, k - 1], dtype=np.float64)
    return d2 / 2.0 if metric == "cosine" else np.sqrt(d2)


# --------------------------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------------------------


def _finite_float(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


def _positive_float(value, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return out


def _check_distance(distance, n: int | None) -> None:
    shape = getattr(distance, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ConfigError(f"distance must be a square (N, N) matrix, got shape {shape}")
    if n is not None and shape[0] != n:
        raise ConfigError(f"distance is {shape[0]} x {shape[0]} but there are {n} features")


def _dbscan(features, distance, eps, min_samples, metric, block_size, max_pairs) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    if distance is None:
        distance = radius_neighbors_graph(
            features, eps, metric=metric, block_size=block_size, max_pairs=max_pairs
        )
    if sp.issparse(distance):
        # fewer entries for scikit-learn to copy and sort; a point's neighbours are unchanged
        distance = within_radius(distance, eps)
    else:
        distance = np.asarray(distance, dtype=np.float64)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distance)
    return relabel(labels)


def _kmeans(features, k, seed, n_init, impl) -> np.ndarray:
    n = len(features)
    if k is None:
        k = max(1, n // 15)  # MSPLR eq. 1: about 15 images per identity
    if int(k) != k or not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= N = {n}, got k={k!r}")
    if impl == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=int(k), n_init=int(n_init), random_state=seed)
        return relabel(km.fit_predict(_as_numpy(features)))
    return relabel(kmeans(features, int(k), seed=seed, n_init=n_init).labels)


# --------------------------------------------------------------------------------------------
# k-means (torch): blocked matrix products, k-means++ seeding on a sample, Lloyd iterations
# --------------------------------------------------------------------------------------------

#: Rows of the point x centre distance block in k-means (block x k float32).
KMEANS_BLOCK_ROWS = 4096
#: Largest k-means++ sample whose pairwise distances are precomputed (m x m float32, 256 MB).
_KMPP_DENSE_MAX = 8192


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`: ``labels`` (N,) int64 (raw cluster ids, not relabelled),
    ``centers`` (k, D) float32 tensor, ``inertia`` (sum of squared distances of the points to
    their centre, float64), ``n_iter`` (Lloyd iterations run)."""

    labels: np.ndarray
    centers: torch.Tensor
    inertia: float
    n_iter: int


def _assign(x, xn, centers, block_rows):
    """Nearest centre of every row (ties: the smaller centre index) and its squared distance."""
    cn = (centers * centers).sum(1)
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    mind = torch.empty(n, dtype=torch.float32, device=x.device)
    buf = None
    for a in range(0, n, block_rows):
        b = min(a + block_rows, n)
        shape = (b - a, centers.shape[0])
        if buf is None or buf.shape != shape:
            buf = torch.empty(shape, dtype=torch.float32, device=x.device)
        torch.addmm(cn.unsqueeze(0), x[a:b], centers.T, beta=1.0, alpha=-2.0, out=buf)
        val, idx = buf.min(dim=1)
        labels[a:b] = idx
        mind[a:b] = (val + xn[a:b]).clamp_(min=0.0)
    return labels, mind


def _kmeanspp(x, k, gen, sample_size, block_rows):
    """Greedy k-means++ (scikit-learn's: ``2 + ln k`` candidates per centre, the one that
    lowers the potential most kept) on a random sample of ``sample_size`` rows."""
    n = x.shape[0]
    dev = x.device
    m = min(n, max(int(sample_size), k))
    sample = (
        torch.arange(n, device=dev)
        if m == n
        else torch.randperm(n, generator=gen, device="cpu")[:m].sort().values.to(dev)
    )
    xs = x[sample]
    xsn = (xs * xs).sum(1)
    dense = None
    if m <= _KMPP_DENSE_MAX:
        dense = torch.addmm(xsn.unsqueeze(0), xs, xs.T, beta=1.0, alpha=-2.0)
        dense += xsn.unsqueeze(1)
        dense.clamp_(min=0.0)

    def dist_rows(idx):
        if dense is not None:
            return dense[idx].to(torch.float64)
        d = torch.addmm(xsn.unsqueeze(0), xs[idx], xs.T, beta=1.0, alpha=-2.0)
        d += xsn[idx].unsqueeze(1)
        return d.clamp_(min=0.0).to(torch.float64)

    trials = 2 + int(math.log(k))
    chosen = torch.empty(k, dtype=torch.int64, device=dev)
    first = int(torch.randint(m, (1,), generator=gen).item())
    chosen[0] = first
    closest = dist_rows(torch.tensor([first], device=dev))[0]
    pot = float(closest.sum())
    for c in range(1, k):
        if pot <= 0:  # every sample point is already a centre: take unused ones in order
            used = torch.zeros(m, dtype=torch.bool, device=dev)
            used[chosen[:c]] = True
            rest = torch.nonzero(~used).squeeze(1)[: k - c]
            chosen[c : c + len(rest)] = rest
            break
        r = torch.rand(trials, generator=gen, dtype=torch.float64).to(dev) * pot
        cand = torch.searchsorted(torch.cumsum(closest, 0), r).clamp_(max=m - 1)
        dc = torch.minimum(dist_rows(cand), closest.unsqueeze(0))
        pots = dc.sum(1)
        best = int(torch.argmin(pots))
        pot = float(pots[best])
        closest = dc[best]
        chosen[c] = cand[best]
    return xs[chosen].clone()


def _relocate_empty(x, labels, mind, counts, sums):
    """Move the points farthest from their centre into the empty clusters (as scikit-learn
    does), updating labels, counts and sums in place."""
    empty = torch.nonzero(counts == 0).squeeze(1)
    if len(empty) == 0:
        return
    far = torch.topk(mind, len(empty)).indices
    old = labels[far]
    sums.index_add_(0, old, -x[far])
    counts.index_add_(0, old, -torch.ones_like(old))
    labels[far] = empty
    sums[empty] = x[far]
    counts[empty] = 1
    mind[far] = 0.0


def kmeans(
    features,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_size: int | None = None,
    block_rows: int = KMEANS_BLOCK_ROWS,
    verbose: bool = False,
) -> KMeansResult:
    """Exact Lloyd k-means in torch, on the CPU or a GPU (the features' device).

    * seeding: greedy k-means++ (scikit-learn's variant) on a random sample of
      ``init_size`` rows (default ``min(N, max(4 k, 8192))``; up to 8192 rows the sample's
      pairwise distances are one matrix of at most 256 MB, computed once, and seeding costs
      about one Lloyd iteration instead of scikit-learn's k x (2 + ln k) passes over the data;
      a larger sample is seeded with blocked products against the sample instead);
    * Lloyd iterations on all rows: nearest centres by blocked matrix products
      (``||c||^2 - 2 x.c``, ties to the smaller centre index), centres as means; an empty
      cluster takes the point farthest from its centre (like scikit-learn);
    * stops when no label changes, or when the inertia drops by less than ``tol`` (relative)
      in an iteration, or after ``max_iter`` iterations. The labels returned are those of the
      returned centres (the last assignment), and ``inertia`` is theirs (computed in float64
      from the differences).

    Deterministic for a seed (on a given machine and thread count). ``n_init`` > 1 keeps the
    run of lowest inertia.

    Args:
        features: (N, D) numpy array or tensor (a CUDA tensor runs on its GPU).
        k: clusters, ``1 <= k <= N``.
        seed: seeds the sample, the k-means++ draws and the first centre.
        n_init: independent seedings; the run of lowest inertia is returned.
        max_iter: cap on Lloyd iterations.
        tol: stop when an iteration lowers the inertia by less than ``tol`` x inertia.
        init_size: rows of the k-means++ sample (default ``min(N, max(4 k, 8192))``).
        block_rows: rows per block of the point x centre distance products.
        verbose: print the inertia of every iteration.

    Returns:
        :class:`KMeansResult` ``(labels, centers, inertia, n_iter)``.
    """
    x = _as_tensor(features).to(torch.float32).contiguous()
    n = x.shape[0]
    if int(k) != k or not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= N = {n}, got k={k!r}")
    k = int(k)
    if int(n_init) != n_init or n_init < 1:
        raise ConfigError(f"n_init must be a positive integer, got {n_init!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not tol >= 0:
        raise ConfigError(f"tol must be >= 0, got {tol!r}")
    size = max(4 * k, _KMPP_DENSE_MAX) if init_size is None else int(init_size)
    if size < 1:
        raise ConfigError(f"init_size must be >= 1, got {init_size!r}")
    xn = (x * x).sum(1)
    gen = torch.Generator().manual_seed(int(seed))
    best = None
    for run in range(int(n_init)):
        centers = _kmeanspp(x, k, gen, size, int(block_rows))
        labels, mind = _assign(x, xn, centers, int(block_rows))
        inertia = float(mind.sum(dtype=torch.float64))
        it = 0
        for it in range(1, int(max_iter) + 1):
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros((k, x.shape[1]), dtype=torch.float32, device=x.device)
            sums.index_add_(0, labels, x)
            _relocate_empty(x, labels, mind, counts, sums)
            new_centers = sums / counts.clamp(min=1).unsqueeze(1).to(torch.float32)
            new_labels, new_mind = _assign(x, xn, new_centers, int(block_rows))
            new_inertia = float(new_mind.sum(dtype=torch.float64))
            changed = int((new_labels != labels).sum())
            if verbose:
                print(f"k-means run {run} iter {it}: inertia {new_inertia:.6g}, {changed} moved")
            if new_inertia > inertia and changed:
                break  # float rounding: keep the better of the two
            done = changed == 0 or (inertia - new_inertia) <= tol * abs(inertia)
            centers, labels, mind, inertia = new_centers, new_labels, new_mind, new_inertia
            if done:
                break
        inertia = _exact_inertia(x, labels, centers, int(block_rows))
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels.cpu().numpy(), centers, inertia, it)
    return best


def _exact_inertia(x, labels, centers, block_rows) -> float:
    """Sum of ``||x - c||^2`` from the differences, in float64 (the matrix-product form used
    for the assignments loses a few ulps of ``||x||^2`` per point)."""
    total = 0.0
    for a in range(0, x.shape[0], block_rows):
        b = min(a + block_rows, x.shape[0])
        diff = x[a:b].to(torch.float64) - centers[labels[a:b]].to(torch.float64)
        total += float((diff * diff).sum())
    return total


# --------------------------------------------------------------------------------------------
# HDBSCAN on a sparse precomputed distance (no N x N array)
# --------------------------------------------------------------------------------------------


def _sklearn_hdbscan_internals():
    """scikit-learn's HDBSCAN tree functions (``sklearn.cluster._hdbscan``, scikit-learn >= 1.3).

    The sparse path builds the minimum spanning tree itself and hands it to these, so that the
    single-linkage tree, the condensed tree, the stabilities and the excess-of-mass selection
    are scikit-learn's own code.
    """
    try:
        from sklearn.cluster._hdbscan._linkage import MST_edge_dtype, make_single_linkage
        from sklearn.cluster._hdbscan._tree import tree_to_labels
    except ImportError as err:  # pragma: no cover - depends on the installed scikit-learn
        import sklearn

        raise ImportError(
            "HDBSCAN on a sparse distance uses scikit-learn's internal HDBSCAN tree functions "
            "(sklearn.cluster._hdbscan._linkage.make_single_linkage, "
            f"sklearn.cluster._hdbscan._tree.tree_to_labels), not importable in scikit-learn "
            f"{sklearn.__version__}: install scikit-learn >= 1.3, or pass "
            "hdbscan_impl='dense' (densifies the distance: 8 N^2 bytes)"
        ) from err
    return MST_edge_dtype, make_single_linkage, tree_to_labels


def _offdiag_csr(distance, fill: float) -> tuple[sp.csr_matrix, int]:
    """The off-diagonal entries of a square sparse distance as canonical CSR, checked: finite,
    ``0 <= value <= fill``, exactly symmetric. float32 input stays float32 when ``fill`` is a
    float32 number (every comparison is then exact in either type; half the memory)."""
    d = distance.tocsr()
    if not d.has_canonical_format:
        d = d.copy()
        d.sum_duplicates()
    n = d.shape[0]
    dtype = np.float32 if d.dtype == np.float32 and float(np.float32(fill)) == fill else np.float64
    counts = np.diff(d.indptr)
    keep = d.indices != np.repeat(np.arange(n, dtype=d.indices.dtype), counts)
    kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    indptr = kept_before[d.indptr]
    del kept_before
    data = d.data[keep].astype(dtype, copy=False)
    indices = d.indices[keep]
    del keep
    if len(data):
        if not np.isfinite(data).all():
            raise ValueError("the sparse distance holds NaN or infinite values")
        lo, hi = float(data.min()), float(data.max())
        if lo < 0:
            raise ValueError(f"the sparse distance holds a negative value ({lo})")
        if hi > fill:
            raise ValueError(
                f"the sparse distance stores a value {hi} > fill = {fill}: missing entries "
                "(which mean fill) must be the farthest; pass a larger fill"
            )
    d = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    d.has_sorted_indices = True  # canonical input, rows filtered in order
    t = d.T.tocsr()
    t.sort_indices()
    same = np.array_equal(d.indptr, t.indptr) and np.array_equal(d.indices, t.indices)
    same = same and np.array_equal(d.data, t.data)
    del t
    if not same:
        raise ValueError(
            "HDBSCAN needs a symmetric distance: the sparse matrix differs from its transpose"
        )
    return d, n


def sparse_core_distances(distance, min_samples: int, *, fill: float = 1.0) -> np.ndarray:
    """HDBSCAN core distances of a sparse precomputed distance whose missing entries mean
    ``fill``: the ``min_samples``-th smallest value of each densified row, the point itself
    (distance 0) counted first, as scikit-learn counts it.

    Equal to ``np.partition(dense, min_samples - 1, axis=1)[:, min_samples - 1]`` on the dense
    matrix with a zero diagonal, without forming it.
    """
    d, _ = _offdiag_csr(distance, float(fill))
    return _core_from_offdiag(d, int(min_samples), float(fill))


def _core_from_offdiag(d: sp.csr_matrix, k: int, fill: float) -> np.ndarray:
    n = d.shape[0]
    if k <= 1:
        return np.zeros(n, dtype=np.float64)
    core = np.full(n, fill, dtype=np.float64)
    counts = np.diff(d.indptr)
    # rows with fewer than k - 1 stored entries keep fill (their k-th smallest is missing);
    # for the others, the (k-1)-th smallest stored value: np.partition of rows padded with
    # +inf, rows of similar length together (linear time, <= ~8 MB of padding at once)
    rows = np.flatnonzero(counts >= k - 1)
    rows = rows[np.argsort(counts[rows], kind="stable")]
    budget = 1 << 20
    start = 0
    while start < len(rows):
        # rows are in ascending length: the chunk ends before the rows longer than `width`
        probe = min(len(rows) - 1, start + budget // max(1, int(counts[rows[start]])))
        width = int(counts[rows[probe]])
        stop = min(len(rows), start + max(1, budget // max(1, width)))
        r = rows[start:stop]
        c = counts[r]
        width = int(c[-1])
        pad = np.full((len(r), width), np.inf)
        local = np.repeat(np.arange(len(r)), c)
        pos = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        pad[local, pos] = d.data[np.repeat(d.indptr[r], c) + pos]
        core[r] = np.partition(pad, k - 2, axis=1)[:, k - 2]
        start = stop
    return core


def sparse_mutual_reachability_mst(distance, min_samples: int, *, fill: float = 1.0):
    """The minimum spanning tree of the mutual-reachability graph of a sparse distance, as
    scikit-learn's dense HDBSCAN path builds it, without an N x N array.

    Mutual reachability ``max(core_i, core_j, d_ij)``, with ``d_ij = fill`` where the sparse
    matrix stores nothing and the core distances of :func:`sparse_core_distances`. Every pair
    of points is therefore joined (missing pairs by edges of weight ``fill``), which is what
    the densified matrix does. The tree is grown by Prim's algorithm exactly as
    ``sklearn.cluster._hdbscan._linkage.mst_from_mutual_reachability`` grows it on the dense
    matrix: start at point 0, add the outside point of smallest reachability to the tree
    (ties: the smallest index), record the edge as ``(previous point, new point, reachability)``.
    Since all stored distances are ``<= fill``, every outside point is within ``fill`` of the
    tree, so only stored entries need a priority queue; the points that have none are taken in
    index order at reachability ``fill``. The output is the same array, edge for edge and in
    the same order, so scikit-learn's single-linkage tree (which sorts it, ties included) and
    everything after it are identical too.

    Returns:
        ``(n - 1,)`` structured array with scikit-learn's ``MST_edge_dtype``
        (``current_node``, ``next_node``, ``distance``).
    """
    import heapq

    mst_dtype, _, _ = _sklearn_hdbscan_internals()
    fill = float(fill)
    d, n = _offdiag_csr(distance, fill)
    k = int(min_samples)
    if not 1 <= k <= n:
        raise ConfigError(f"min_samples must be in [1, N = {n}], got {min_samples!r}")
    core = _core_from_offdiag(d, k, fill)
    # mutual reachability of every stored pair, once (the dense loop's max(core, core, d))
    core_t = core.astype(d.dtype)  # exact: core values are stored values or fill
    mr = np.maximum(d.data, np.repeat(core_t, np.diff(d.indptr)))
    d.data = mr
    np.maximum(mr, core_t[d.indices], out=mr)
    del core_t
    indptr = d.indptr.tolist()
    indices = d.indices
    del d

    best = np.full(n, np.inf)  # smallest reachability to the tree through a stored entry
    visited = np.zeros(n, dtype=bool)
    heap: list[tuple[float, int]] = []
    out_cur = np.empty(n - 1, dtype=np.int64)
    out_next = np.empty(n - 1, dtype=np.int64)
    out_dist = np.empty(n - 1, dtype=np.float64)
    push, pop = heapq.heappush, heapq.heappop
    low = 0  # the smallest index outside the tree
    current = 0
    for step in range(n - 1):
        visited[current] = True
        best[current] = -np.inf  # never improved again, and stale in the heap
        s, e = indptr[current], indptr[current + 1]
        if e > s:
            nb = indices[s:e]
            w = mr[s:e]
            better = w < best[nb]
            if better.any():
                nb, w = nb[better], w[better]
                best[nb] = w
                for val, j in zip(w.tolist(), nb.tolist()):
                    push(heap, (val, j))
        while heap and heap[0][0] != best[heap[0][1]]:
            pop(heap)
        while visited[low]:
            low += 1
        if heap and (heap[0][0] < fill or (heap[0][0] == fill and heap[0][1] < low)):
            val, new = heap[0]
        else:
            val, new = fill, low
        out_cur[step] = current
        out_next[step] = new
        out_dist[step] = val
        current = new
    return np.rec.fromarrays([out_cur, out_next, out_dist], dtype=mst_dtype)


def hdbscan_sparse(
    distance,
    *,
    min_cluster_size: int = 10,
    min_samples: int | None = None,
    fill: float = 1.0,
    cluster_selection_method: Literal["eom", "leaf"] = "eom",
    allow_single_cluster: bool = False,
    cluster_selection_epsilon: float = 0.0,
) -> np.ndarray:
    """HDBSCAN on a sparse precomputed distance (missing entries mean ``fill``), in O(stored
    entries) memory: the labels scikit-learn's ``HDBSCAN(metric="precomputed")`` gives on the
    densified matrix (missing entries ``fill``, zero diagonal), relabelled by first appearance.

    The minimum spanning tree of the mutual-reachability graph is
    :func:`sparse_mutual_reachability_mst` (the same edges, in the same order, as scikit-learn's
    dense Prim's algorithm); the single-linkage tree, condensed tree, cluster stabilities and
    the excess-of-mass (or leaf) selection are scikit-learn's own functions
    (``sklearn.cluster._hdbscan``), so ties resolve the same way and the labels are equal.

    Args:
        distance: (N, N) symmetric sparse distance, stored values in ``[0, fill]`` (the
            k-reciprocal Jaccard CSR of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`
            with ``fill = 1``). The diagonal is taken as 0 whatever is stored there.
        min_cluster_size: smallest cluster (PAST's S_min).
        min_samples: core-point size, the point itself included; ``None``: ``min_cluster_size``
            (scikit-learn's default).
        fill: the distance of the pairs the matrix does not store.
        cluster_selection_method, allow_single_cluster, cluster_selection_epsilon: as in
            ``sklearn.cluster.HDBSCAN``.

    Returns:
        (N,) int64 labels ``0..C-1`` in order of first appearance, -1 = noise.
    """
    if not sp.issparse(distance):
        raise ConfigError("hdbscan_sparse needs a scipy.sparse distance matrix")
    _check_distance(distance, None)
    n = distance.shape[0]
    if n < 2:
        raise ConfigError("HDBSCAN needs at least 2 samples")
    mcs = int(min_cluster_size)
    if mcs != min_cluster_size or mcs < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    ms = mcs if min_samples is None else int(min_samples)
    if ms > n:
        raise ConfigError(f"min_samples ({ms}) must be at most the number of samples ({n})")
    fill = _finite_float(fill, "fill")
    _, make_single_linkage, tree_to_labels = _sklearn_hdbscan_internals()
    mst = sparse_mutual_reachability_mst(distance, ms, fill=fill)
    # scikit-learn's _process_mst: sort the edges by weight (the same unstable argsort of the
    # same array, so the same order of tied edges), then the single-linkage tree
    mst = mst[np.argsort(mst["distance"])]
    slt = make_single_linkage(mst)
    labels, _ = tree_to_labels(
        slt,
        mcs,
        cluster_selection_method,
        bool(allow_single_cluster),
        float(cluster_selection_epsilon),
        None,
    )
    return relabel(labels)


def _hdbscan(
    features, distance, min_cluster_size, min_samples, metric, fill, impl, dense_limit
) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    if distance is not None and sp.issparse(distance) and impl == "sparse":
        return hdbscan_sparse(
            distance, min_cluster_size=min_cluster_size, min_samples=min_samples, fill=fill
        )
    if distance is not None:
        n = distance.shape[0]
        if sp.issparse(distance):
            if n > dense_limit:
                raise ConfigError(
                    f"hdbscan_impl='dense' densifies the sparse distance (8 N^2 bytes = "
                    f"{8 * n * n / 2**30:.1f} GiB for N = {n}), above hdbscan_dense_limit = "
                    f"{dense_limit}; use hdbscan_impl='sparse' (the same labels, O(N k) "
                    "memory) or raise hdbscan_dense_limit"
                )
            coo = distance.tocoo()
            dense = np.full(distance.shape, float(fill), dtype=np.float64)
            dense[coo.row, coo.col] = coo.data
        else:
            dense = np.array(distance, dtype=np.float64, copy=True)
        np.fill_diagonal(dense, 0.0)
        model = HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            metric="precomputed",
            copy=False,
        )
        return relabel(model.fit_predict(dense))
    x = _as_numpy(features).astype(np.float64)
    model = HDBSCAN(
        min_cluster_size=min_cluster_size, min_samples=min_samples, metric=metric, copy=False
    )
    return relabel(model.fit_predict(x))


def cluster(
    features=None,
    *,
    method: Method = "dbscan",
    distance=None,
    eps: float = 0.42,
    min_samples: int | None = None,
    k: int | None = None,
    min_cluster_size: int = 10,
    seed: int = 0,
    metric: Metric = "euclidean",
    n_init: int = 1,
    fill: float = 1.0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    hdbscan_dense_limit: int = HDBSCAN_DENSE_LIMIT,
    hdbscan_impl: HdbscanImpl = "sparse",
    kmeans_impl: KMeansImpl = "torch",
) -> np.ndarray:
    """Cluster target images into pseudo identities; returns (N,) labels, -1 for outliers.

    Args:
        features: (N, D) features (numpy or torch). Needed for k-means; for DBSCAN / HDBSCAN
            when no ``distance`` is given.
        method: "dbscan" (MSPLR section 3.3.2), "kmeans" (section 3.3.1, eq. 1) or "hdbscan"
            (PAST section 2.2).
        distance: optional (N, N) precomputed distance, dense array or sparse matrix (e.g. the
            k-reciprocal Jaccard CSR, or a :func:`radius_neighbors_graph`). Sparse: missing
            entries mean "farther than eps" for DBSCAN and ``fill`` for HDBSCAN.
        eps: DBSCAN neighbourhood radius (paper: 0.35 for DukeMTMC, 0.42 for Market-1501 as
            target, on L2-normalised features; see :mod:`adaptreid.pseudo.camera_norm`).
        min_samples: DBSCAN / HDBSCAN core-point size, the point itself included. ``None``:
            4 for DBSCAN (MSPLR), ``min_cluster_size`` for HDBSCAN (scikit-learn's and PAST's
            default).
        k: k-means clusters; ``None``: ``max(1, N // 15)`` (MSPLR eq. 1).
        min_cluster_size: HDBSCAN's smallest cluster (PAST's S_min, 10 in the paper).
        seed: k-means random state.
        metric: distance between features: "euclidean" or "cosine" (DBSCAN and HDBSCAN).
        n_init: k-means restarts.
        fill: HDBSCAN: the distance of the pairs a sparse ``distance`` does not store (1 for
            Jaccard).
        block_size: rows per block of the euclidean radius graph.
        max_pairs: cap on the radius graph (see :func:`radius_neighbors_graph`).
        hdbscan_dense_limit: ``hdbscan_impl="dense"`` only: the largest N it densifies (float64
            N x N); above it, a :class:`ConfigError` (never a switch of algorithm).
        hdbscan_impl: HDBSCAN on a sparse ``distance``: "sparse" (default,
            :func:`hdbscan_sparse`, O(stored entries) memory at every N) or "dense" (densify
            and run scikit-learn's HDBSCAN: the same labels, 8 N^2 bytes; for comparison).
            A dense ``distance`` and features always go to scikit-learn's HDBSCAN.
        kmeans_impl: "torch" (default, :func:`kmeans`: k-means++ seeding on a sample, blocked
            Lloyd iterations) or "sklearn" (``sklearn.cluster.KMeans``, for comparison).

    Returns:
        int64 labels relabelled ``0..C-1`` in order of first appearance, -1 = outlier
        (k-means never returns -1).
    """
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    _check_metric(metric)
    if features is None and distance is None:
        raise ConfigError("cluster() needs features or a precomputed distance")
    n = None if features is None else len(features)
    if distance is not None:
        _check_distance(distance, n)
    if min_samples is not None and (int(min_samples) != min_samples or min_samples < 1):
        raise ConfigError(f"min_samples must be a positive integer, got {min_samples!r}")

    if method == "dbscan":
        eps = _positive_float(eps, "DBSCAN eps")
        ms = 4 if min_samples is None else int(min_samples)
        return _dbscan(features, distance, eps, ms, metric, block_size, max_pairs)
    if method == "kmeans":
        if features is None:
            raise ConfigError("k-means needs features (it cannot use a precomputed distance)")
        if kmeans_impl not in _KMEANS_IMPLS:
            raise ConfigError(f"kmeans_impl must be one of {_KMEANS_IMPLS}, got {kmeans_impl!r}")
        return _kmeans(features, k, seed, n_init, kmeans_impl)
    if hdbscan_impl not in _HDBSCAN_IMPLS:
        raise ConfigError(f"hdbscan_impl must be one of {_HDBSCAN_IMPLS}, got {hdbscan_impl!r}")
    if int(min_cluster_size) != min_cluster_size or min_cluster_size < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    return _hdbscan(
        features,
        distance,
        int(min_cluster_size),
        None if min_samples is None else int(min_samples),
        metric,
        _finite_float(fill, "fill"),
        hdbscan_impl,
        int(hdbscan_dense_limit),
    )
