"""Pairwise distances between query and gallery features, computed in blocks of query rows.

Which metric each reproduced paper ranks with:

* **MSPLR**: features are trained with a triplet loss "in an Euclidean vector
  space"; the paper does not name its test distance, so adaptreid evaluates MSPLR with the
  ``"euclidean"`` distance between the BNNeck features, L2-normalised at extraction
  (:func:`adaptreid.engine.extract.extract_features`), the strong-baseline convention; on
  unit rows it ranks exactly like the cosine distance.
* **PAST** (Sec. 4 "Evaluating Settings"): the 9 part embeddings are L2-normalised
  separately and concatenated (the model's job), then ranked by ``"cosine"`` distance.

``"sqeuclidean"`` is what torchreid and fast-reid call "euclidean": it ranks exactly like
``"euclidean"`` (a monotone transform) but its values differ, which matters to re-ranking and
to any threshold on distances.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("euclidean", "sqeuclidean", "cosine")


def _to_tensor(x: object, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (num_samples, dim) array, got shape {tuple(t.shape)}"
        )
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    # float64 stays float64; half/bfloat16/integers are computed in float32 for accuracy.
    return t if t.dtype == torch.float64 else t.float()


def pairwise_distance(
    query: torch.Tensor | np.ndarray,
    gallery: torch.Tensor | np.ndarray,
    metric: str = "euclidean",
    *,
    block_size: int = 2048,
) -> torch.Tensor | np.ndarray:
    """Distance matrix ``D[i, j] = d(query[i], gallery[j])`` of shape ``(Q, G)``.

    Args:
        query: ``(Q, dim)`` features, a torch tensor (any device) or a numpy array.
        gallery: ``(G, dim)`` features.
        metric: ``"euclidean"`` (``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))``), ``"sqeuclidean"``
            (the same without the square root) or ``"cosine"`` (``1 - cos(q, g)``; both sides
            are L2-normalised inside, so callers need not normalise; an all-zero vector has
            distance 1 to everything).
        block_size: query rows per block. Only the ``(Q, G)`` result is held in full; each
            block's temporaries are computed in place in its rows of the result.

    Returns:
        A torch tensor on ``query``'s device if either input is a tensor, otherwise a numpy
        array. float64 inputs give float64; everything else is computed in float32.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    as_torch = isinstance(query, torch.Tensor) or isinstance(gallery, torch.Tensor)
    q = _to_tensor(query, "query")
    g = _to_tensor(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {q.shape[1]} vs {g.shape[1]}")
    dtype = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    q = q.to(dtype)
    g = g.to(device=q.device, dtype=dtype)

    if metric == "cosine":
        q = F.normalize(q, dim=1)
        g = F.normalize(g, dim=1)
    else:
        g_sq = (g * g).sum(dim=1)
    gt = g.t()

    out = torch.empty((q.shape[0], g.shape[0]), dtype=dtype, device=q.device)
    for start in range(0, q.shape[0], block_size):
        qb = q[start : start + block_size]
        ob = out[start : start + block_size]  # contiguous row block: written in place
        torch.matmul(qb, gt, out=ob)
        if metric == "cosine":
            ob.neg_().add_(1.0)
        else:
            ob.mul_(-2.0).add_((qb * qb).sum(dim=1, keepdim=True)).add_(g_sq).clamp_(min=0.0)
            if metric == "euclidean":
                ob.sqrt_()
    return out if as_torch else out.cpu().numpy()
