"""Cluster means of features: PAST's classifier initialisation (eq. 7) and a cluster
memory's initial entries (cluster contrast)."""

from __future__ import annotations

import numpy as np
import torch

from adaptreid.errors import TrainingError

__all__ = ["cluster_means"]


def cluster_means(features, labels) -> torch.Tensor:
    """``(C, D)``: row ``c`` is the mean of the features of the images labelled ``c``
    (PAST eq. 7, ``W_c``); labels -1 are ignored. ``C = max(labels) + 1``."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x = torch.as_tensor(features).float()
    if len(labels_t) != len(x):
        raise ValueError(f"{len(labels_t)} labels for {len(x)} feature rows")
    keep = labels_t >= 0
    if not bool(keep.any()):
        raise TrainingError("cluster means: no labelled image (every label is -1)")
    x, lab = x[keep], labels_t[keep]
    num_classes = int(lab.max()) + 1
    sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, lab, x)
    counts = torch.bincount(lab, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts
