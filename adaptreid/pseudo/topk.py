"""Exact top-k neighbours by squared euclidean distance, in square blocks, without an N x N
matrix: the first step of the k-reciprocal encoding (:mod:`.kreciprocal`, Zhong et al.,
CVPR 2017) and of the DBSCAN kth-neighbour statistics.

Only the upper block triangle is computed: each block updates the running top-k and row
maximum of its rows and (transposed) of its columns. Ties are broken by the smaller index (a
total order, as a stable ``argsort``). Under torch.distributed the blocks are dealt out to the
ranks and the N x k key tables merged (``distributed=True``); faiss is an optional backend.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

Backend = Literal["auto", "torch", "faiss"]

#: Rows (and columns) of one distance block: 2048 x 2048 float32 = 16 MB, with its top-k and
#: transposed copies well under 256 MB, and large enough for the matrix product to run at full
#: speed.
DEFAULT_BLOCK_SIZE = 2048

# (distance, index) pairs are packed into one int64: the float32 bits of the distance (>= +0.0,
# so they order like the float) in the high 32 bits and the column index in the low 32 bits.
# Sorting the packed keys sorts by distance, then by index: a total order, no ties.
_LOW = 0xFFFFFFFF
_SENTINEL = torch.iinfo(torch.int64).max
# Rows per elementwise pass over the features (keeps temporaries small at N = 200,000).
_ROWS_PER_PASS = 8192

__all__ = ["DEFAULT_BLOCK_SIZE", "Backend", "topk_neighbors"]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def as_features(x, name: str, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples x dims) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if device is not None:
        t = t.to(device)
    t = t.to(torch.float32).contiguous()
    if not all(bool(torch.isfinite(c).all()) for c in t.split(_ROWS_PER_PASS)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row squared norms, by row chunks (no temporary the size of x)."""
    return torch.cat([(c * c).sum(1) for c in x.split(_ROWS_PER_PASS)])


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_k(k1, k2, lambda_value: float | None = None) -> tuple[int, int]:
    k1, k2 = positive_int(k1, "k1"), positive_int(k2, "k2")
    if lambda_value is not None and not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    return k1, k2


def check_backend(backend: str) -> str:
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "backend='faiss' needs faiss: pip install 'adaptreid[faiss]' (or faiss-cpu); "
                "backend='torch' is exact and needs nothing else"
            ) from err
        return "faiss"
    return "torch"


# --------------------------------------------------------------------------------------------
# exact blocked top-k (torch)
# --------------------------------------------------------------------------------------------


def _encode(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pack (distance >= 0, index) into int64 keys that sort by distance, then index."""
    bits = (vals + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    return (bits << 32) | idx


def decode_keys(keys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    keys = keys.cpu()
    dist = (keys >> 32).to(torch.int32).view(torch.float32).numpy().copy()
    idx = (keys & _LOW).numpy().copy()
    return dist, idx


def _sq_dists(xa, na, yb, nb) -> torch.Tensor:
    """Squared euclidean distances ||a||^2 + ||b||^2 - 2 a.b of two row blocks, clamped >= 0."""
    d = torch.addmm(nb.unsqueeze(0), xa, yb.T, beta=1.0, alpha=-2.0)
    d += na.unsqueeze(1)
    return d.clamp_(min=0.0)


def _block_topk(d: torch.Tensor, k: int, offset: int) -> torch.Tensor:
    """Exact (distance, index)-ordered top-k of each row of a block, as packed keys."""
    width = d.shape[1]
    if width <= k:
        vals, loc = torch.sort(d, dim=1, stable=True)
    else:
        vals, loc = torch.topk(d, k + 1, dim=1, largest=False, sorted=True)
        # The k smallest *values* are exact; which of several equal values topk returns is not.
        # Where the k-th and (k+1)-th values differ the set is unique; elsewhere sort the row.
        tie = vals[:, k - 1] == vals[:, k]
        vals, loc = vals[:, :k], loc[:, :k]
        if bool(tie.any()):
            vals, loc = vals.clone(), loc.clone()
            rows = tie.nonzero().squeeze(1)
            sv, sl = torch.sort(d[rows], dim=1, stable=True)
            vals[rows], loc[rows] = sv[:, :k], sl[:, :k]
    return _encode(vals, loc + offset)


def _merge(run: torch.Tensor, cand: torch.Tensor, k: int) -> None:
    """run <- the k smallest keys of run and cand (keys are unique, so this is exact)."""
    merged = torch.cat([run, cand], dim=1)
    run.copy_(torch.topk(merged, k, dim=1, largest=False, sorted=True).values)


def _knn_torch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: int,
    block_size: int,
    verbose: bool,
    qg: tuple[int, torch.Tensor] | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running exact top-k keys and row maxima over blocks of the distance matrix.

    ``y is None``: x against itself, upper block triangle only, each block used for its rows
    and (transposed) its columns. ``qg = (q, out)``: also copy the distances of rows ``< q`` to
    columns ``>= q`` into ``out`` (q x (N - q)), for re-ranking. ``shard = (rank, world)``:
    only the blocks ``rank, rank + world, ...`` of the list of blocks (rows and columns the
    blocks do not reach keep sentinel keys / a 0 maximum): partial tables that
    :func:`_merge_shards` combines.
    """
    symmetric = y is None
    if symmetric:
        y = x
    n, m = x.shape[0], y.shape[0]
    k = min(k, m)
    xn = sq_norms(x)
    yn = xn if symmetric else sq_norms(y)
    run = torch.full((n, k), _SENTINEL, dtype=torch.int64, device=x.device)
    rowmax = torch.zeros(n, dtype=torch.float32, device=x.device)
    starts_x = list(range(0, n, block_size))
    starts_y = list(range(0, m, block_size))
    pairs = [(a, b) for a in starts_x for b in starts_y if not symmetric or b >= a]
    if shard is not None:
        pairs = pairs[shard[0] :: shard[1]]
    # Two reusable block buffers: block-sized temporaries churning through the allocator
    # fragment the heap (measured: +0.6 GB peak RSS at N = 100,000) and cost time.
    buf = torch.empty(2, block_size * block_size, dtype=torch.float32, device=x.device)
    bar = tqdm(pairs, desc="k-reciprocal: distance blocks", disable=not verbose, leave=False)
    for a, b in bar:
        a1, b1 = min(a + block_size, n), min(b + block_size, m)
        d = buf[0, : (a1 - a) * (b1 - b)].view(a1 - a, b1 - b)
        torch.addmm(yn[b:b1].unsqueeze(0), x[a:a1], y[b:b1].T, beta=1.0, alpha=-2.0, out=d)
        d += xn[a:a1].unsqueeze(1)
        d.clamp_(min=0.0)
        if symmetric and a == b:
            # Make the diagonal block exactly symmetric with an exact zero diagonal.
            d.triu_(diagonal=1)
            dt = buf[1, : d.numel()].view(d.shape)
            dt.copy_(d.T)
            d += dt
        _merge(run[a:a1], _block_topk(d, k, b), k)
        torch.maximum(rowmax[a:a1], d.amax(dim=1), out=rowmax[a:a1])
        if qg is not None:
            _copy_qg(qg, d, a, a1, b, b1)
        if symmetric and a != b:
            dt = buf[1, : d.numel()].view(b1 - b, a1 - a)
            dt.copy_(d.T)
            _merge(run[b:b1], _block_topk(dt, k, a), k)
            torch.maximum(rowmax[b:b1], dt.amax(dim=1), out=rowmax[b:b1])
            if qg is not None:
                _copy_qg(qg, dt, b, b1, a, a1)
    return run, rowmax


def _copy_qg(qg, d, r0, r1, c0, c1) -> None:
    q, out = qg
    rr1, cc0 = min(r1, q), max(c0, q)
    if r0 < rr1 and cc0 < c1:
        out[r0:rr1, cc0 - q : c1 - q] = d[: rr1 - r0, cc0 - c0 :].cpu()


# --------------------------------------------------------------------------------------------
# faiss top-k (optional)
# --------------------------------------------------------------------------------------------


def _knn_faiss(x: torch.Tensor, y: torch.Tensor | None, k: int, chunk: int = 16384):
    """Top-k and row maxima with faiss flat (exact) indexes.

    faiss computes the same squared distances (up to float rounding) but orders ties its own
    way; we re-sort each returned row by (distance, index), but which of several neighbours
    tied at the k-th place is returned is faiss's choice. The row maximum (needed by the
    reference's normalisation) is a maximum-inner-product search on augmented vectors:
    ``max_j ||x_i - y_j||^2 = ||x_i||^2 + max_j <[x_i, 1], [-2 y_j, ||y_j||^2]>``.
    """
    import faiss

    xs = x.cpu().numpy()
    ys = xs if y is None else y.cpu().numpy()
    k = min(k, ys.shape[0])
    index = faiss.IndexFlatL2(ys.shape[1])
    index.add(ys)
    yn = (ys.astype(np.float64) ** 2).sum(1).astype(np.float32)
    ip = faiss.IndexFlatIP(ys.shape[1] + 1)
    ip.add(np.ascontiguousarray(np.concatenate([-2.0 * ys, yn[:, None]], axis=1)))
    keys, rowmax = [], []
    for s in range(0, xs.shape[0], chunk):
        xb = xs[s : s + chunk]
        dist, idx = index.search(xb, k)
        dist = np.maximum(dist, 0.0)
        if y is None:  # d(p, p) = 0 exactly, as in the torch backend
            dist[idx == np.arange(s, s + len(xb))[:, None]] = 0.0
        key = _encode(torch.from_numpy(dist), torch.from_numpy(idx.astype(np.int64)))
        keys.append(torch.sort(key, dim=1).values)
        mx, _ = ip.search(
            np.ascontiguousarray(np.concatenate([xb, np.ones((len(xb), 1), np.float32)], 1)), 1
        )
        xn = (xb.astype(np.float64) ** 2).sum(1)
        rowmax.append(torch.from_numpy(np.maximum(mx[:, 0] + xn, 0.0).astype(np.float32)))
    return torch.cat(keys), torch.cat(rowmax)


# --------------------------------------------------------------------------------------------
# sharded top-k across torch.distributed ranks
# --------------------------------------------------------------------------------------------


def _dist_world() -> int:
    """World size of the default process group; 0 when torch.distributed is not initialised."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0


def use_sharding(distributed: bool | None, backend: str) -> bool:
    """``distributed=None``: shard when torch.distributed is initialised with world size > 1."""
    world = _dist_world()
    if distributed is None:
        distributed = world > 1
    elif distributed and world == 0:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group (launch with "
            "torchrun and call adaptreid.runtime.distributed.init()); distributed=None shards "
            "only when there is one"
        )
    if not distributed or world == 1:
        return False
    if backend == "faiss":
        raise ValueError("the sharded top-k is the exact torch backend: pass backend='torch'")
    return True


def _merge_shards(run: torch.Tensor, rowmax: torch.Tensor, k: int):
    """Combine every rank's partial top-k keys and row maxima (all ranks get the result).

    The keys pack (distance, index) and are unique, so the k smallest over the union of the
    ranks' blocks are exactly the k smallest over all blocks: the single-process table.
    """
    import torch.distributed as dist

    dev = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    )
    home = run.device
    if dev is not None:
        run, rowmax = run.to(dev), rowmax.to(dev)
    else:
        run, rowmax = run.cpu(), rowmax.cpu()
    parts = [torch.empty_like(run) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, run.contiguous())
    merged = torch.cat(parts, dim=1)
    del parts
    out = torch.topk(merged, k, dim=1, largest=False, sorted=True).values
    del merged
    dist.all_reduce(rowmax, op=dist.ReduceOp.MAX)
    return out.to(home), rowmax.to(home)


def neighbours(x, y, k, block_size, backend, verbose, qg=None, sharded=False):
    if sharded:
        if qg is not None:  # pragma: no cover - internal misuse
            raise ValueError("re-ranking is not sharded")
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if world > 1:
            kk = min(k, x.shape[0] if y is None else y.shape[0])
            run, rowmax = _knn_torch(x, y, k, block_size, verbose, shard=(rank, world))
            return _merge_shards(run, rowmax, kk)
    if backend == "faiss":
        keys, rowmax = _knn_faiss(x, y, k)
        if qg is not None:  # the query x gallery block of the original distance
            q, out = qg
            for a in range(0, q, block_size):
                a1 = min(a + block_size, q)
                xa = x[a:a1]
                for b in range(q, x.shape[0], block_size):
                    b1 = min(b + block_size, x.shape[0])
                    yb = x[b:b1]
                    d = _sq_dists(xa, sq_norms(xa), yb, sq_norms(yb))
                    out[a:a1, b - q : b1 - q] = d.cpu()
        return keys, rowmax
    return _knn_torch(x, y, k, block_size, verbose, qg)


def topk_neighbors(
    x,
    k: int,
    *,
    y=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    backend: Backend = "auto",
    verbose: bool = False,
    distributed: bool | None = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours under squared euclidean distance, computed in blocks.

    Args:
        x: (N, d) features (numpy array or tensor; a CUDA tensor is processed on its device).
        k: neighbours per row (capped at the number of candidates).
        y: (M, d) candidates; ``None`` means ``x`` itself (then each point is its own first
            neighbour, at distance exactly 0, unless an exact duplicate has a smaller index).
        block_size: rows per distance block (memory is O(block_size^2 + N k)).
        backend: "auto"/"torch" (exact, blocked torch matmul) or "faiss" (``IndexFlatL2``,
            exact distances, its own choice among neighbours tied at the k-th place).
        verbose: show a progress bar.
        distributed: ``True``: shard the search across torch.distributed ranks (each rank
            computes every world-size-th block of the distance matrix; the N x k tables are
            merged on all ranks, exactly the single-process result, same tie order). It is
            then a collective: **every rank must call it**, with the same inputs. ``None``:
            shard when torch.distributed is initialised with world size > 1. ``False``
            (default here, as this function also serves rank-0-only helpers): this process
            computes everything.

    Returns:
        ``(dist, idx)``: (N, k) float32 squared distances and int64 indices, each row sorted by
        (distance, index), i.e. the first k columns of a stable argsort of the distance row.
    """
    k = positive_int(k, "k")
    block_size = positive_int(block_size, "block_size")
    backend = check_backend(backend)
    xt = as_features(x, "x")
    yt = None if y is None else as_features(y, "y", device=xt.device)
    if yt is not None and yt.shape[1] != xt.shape[1]:
        raise ValueError(f"x has {xt.shape[1]} dims but y has {yt.shape[1]}")
    sharded = use_sharding(distributed, backend)
    keys, _ = neighbours(xt, yt, int(k), block_size, backend, verbose, sharded=sharded)
    return decode_keys(keys)
