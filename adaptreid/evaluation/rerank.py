"""k-reciprocal re-ranking of a query x gallery distance (Zhong et al., CVPR 2017, eq. 12).

A thin, evaluation-facing wrapper over :func:`adaptreid.pseudo.kreciprocal.k_reciprocal_rerank`
(the blocked, sparse engine): ``adaptreid evaluate --rerank`` ranks the gallery by this
distance instead of the plain euclidean one.
"""

from __future__ import annotations

import numpy as np

from adaptreid.pseudo.kreciprocal import DEFAULT_BLOCK_SIZE, Backend, k_reciprocal_rerank

__all__ = ["rerank"]


def rerank(
    query_feats,
    gallery_feats,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    backend: Backend = "auto",
    verbose: bool = False,
) -> np.ndarray:
    """Re-ranked query x gallery distance, ``(1 - lambda) d_Jaccard + lambda d_original``.

    Args:
        query_feats: (q, d) query features (numpy array or tensor), as used for the plain
            distance (L2-normalise them first if the plain evaluation does).
        gallery_feats: (g, d) gallery features.
        k1, k2, lambda_value: the paper's parameters (defaults 20, 6, 0.3); ``k2 = 1``
            disables the local query expansion, ``lambda_value = 1`` keeps the original
            (row-normalised squared euclidean) distance.
        block_size: rows per distance block; memory is O((q + g) k + block_size^2) besides the
            q x g output.
        backend: "auto"/"torch" (exact) or "faiss" (optional, for the neighbour search).
        verbose: progress bars.

    Returns:
        (q, g) float32 distances; smaller is more similar.
    """
    return k_reciprocal_rerank(
        query_feats,
        gallery_feats,
        k1,
        k2,
        lambda_value,
        block_size=block_size,
        backend=backend,
        verbose=verbose,
    )
