"""Top-k ranked gallery entries per query, under the Market-1501 protocol, for rank-list
pictures (drawing them is not done here: this module stays a pure function on arrays).

The ranking is exactly the one :func:`~adaptreid.evaluation.metrics.evaluate_rank` scores:
ascending distance, ties broken by gallery order, with the gallery entries of the query's
identity from the query's camera and the junk entries (pid ``-1``) removed.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import JUNK_PID, _check_inputs, _rows, stable_argsort_rows

__all__ = ["top_k_matches"]


def top_k_matches(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    k: int = 10,
    *,
    chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest valid gallery entries of each query.

    Returns:
        ``indices``: ``(Q, k)`` int64 gallery indices, nearest first; ``-1`` pads rows with
        fewer than ``k`` valid entries. ``is_match``: ``(Q, k)`` bool, True where the entry
        has the query's pid (always False on padding).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_q = distmat.shape[0]
    indices = np.full((num_q, k), -1, dtype=np.int64)
    is_match = np.zeros((num_q, k), dtype=bool)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        qp, qc = q_pids[start:stop, None], q_camids[start:stop, None]
        order = stable_argsort_rows(_rows(distmat, start, stop))
        gp = g_pids[order]
        match = gp == qp
        valid = ~(match & (g_camids[order] == qc)) & (gp != JUNK_PID)
        pos = np.cumsum(valid, axis=1)  # 1-based position among the valid entries
        r, c = np.nonzero(valid & (pos <= k))
        slot = pos[r, c] - 1
        indices[start + r, slot] = order[r, c]
        is_match[start + r, slot] = match[r, c]
    return indices, is_match
