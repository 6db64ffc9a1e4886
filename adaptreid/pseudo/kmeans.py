"""k-means (MSPLR section 3.3.1, ``k = N // 15`` by eq. 1) in torch: greedy k-means++
seeding on a sample, then Lloyd iterations with blocked matrix products (CPU or GPU);
scikit-learn's ``KMeans`` for comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import ConfigError
from .cluster_base import as_numpy, as_tensor, relabel

__all__ = ["KMeansResult", "LloydSettings", "kmeans", "kmeans_labels"]

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


@dataclass(frozen=True)
class LloydSettings:
    """How :func:`kmeans` seeds and iterates (the defaults suit re-ID features)."""

    max_iter: int = 100
    """Cap on Lloyd iterations."""
    tol: float = 1e-4
    """Stop when an iteration lowers the inertia by less than ``tol`` x inertia."""
    init_size: int | None = None
    """Rows of the k-means++ sample (None: ``min(N, max(4 k, 8192))``)."""
    block_rows: int = KMEANS_BLOCK_ROWS
    """Rows per block of the point x centre distance products (memory, not results)."""


def kmeans(
    features,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    lloyd: LloydSettings | None = None,
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
        lloyd: ``max_iter``, ``tol``, ``init_size``, ``block_rows`` (a
            :class:`LloydSettings`; None: its defaults).
        verbose: print the inertia of every iteration.

    Returns:
        :class:`KMeansResult` ``(labels, centers, inertia, n_iter)``.
    """
    lloyd = lloyd or LloydSettings()
    max_iter, tol, init_size = lloyd.max_iter, lloyd.tol, lloyd.init_size
    block_rows = lloyd.block_rows
    x = as_tensor(features).to(torch.float32).contiguous()
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


def kmeans_labels(features, k, seed, n_init, impl) -> np.ndarray:
    n = len(features)
    if k is None:
        k = max(1, n // 15)  # MSPLR eq. 1: about 15 images per identity
    if int(k) != k or not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= k <= N = {n}, got k={k!r}")
    if impl == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=int(k), n_init=int(n_init), random_state=seed)
        return relabel(km.fit_predict(as_numpy(features)))
    return relabel(kmeans(features, int(k), seed=seed, n_init=n_init).labels)
