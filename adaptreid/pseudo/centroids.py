"""Cluster means of features: PAST's classifier initialisation (eq. 7) and a contrastive
memory's initial entries (cluster contrast; MSPLR with ``method.memory``), per cluster or per
camera-aware proxy (CAP)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adaptreid.errors import TrainingError

__all__ = ["camera_proxies", "cluster_means", "initial_memory"]


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


def camera_proxies(labels, camids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-aware proxies (CAP, Wang et al., AAAI 2021, "camera-aware proxies"): each
    cluster split by camera, one proxy per (cluster, camera) pair that holds images.

    Args:
        labels: ``(N,)`` cluster labels, ``-1`` for outliers (they get no proxy).
        camids: ``(N,)`` camera ids (any integers).

    Returns:
        ``proxy`` ``(N,)``: each image's proxy (``-1`` for outliers); ``proxy_cluster``
        ``(P,)`` and ``proxy_camera`` ``(P,)``: each proxy's cluster and camera id. Proxies
        are numbered by cluster, then camera id (ascending).
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    camids = np.asarray(camids).astype(np.int64).reshape(-1)
    if labels.shape != camids.shape:
        raise ValueError(f"{len(labels)} labels for {len(camids)} camera ids")
    keep = labels >= 0
    pairs = np.stack([labels[keep], camids[keep]], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)  # sorted by (cluster, cam)
    proxy = np.full(len(labels), -1, dtype=np.int64)
    proxy[keep] = inverse.reshape(-1)
    return proxy, uniq[:, 0].copy(), uniq[:, 1].copy()


def initial_memory(
    features, labels, camids=None, *, normalize: bool = False
) -> dict[str, np.ndarray]:
    """A contrastive memory's initial entries, as arrays (float32 / int64) a method keeps
    with its pseudo-labels.

    Without ``camids``: ``{"memory": (C, D)}``, row ``c`` the L2-normalised mean of the
    ``features`` labelled ``c`` (cluster contrast's memory). With ``camids``: one row per
    camera-aware proxy (:func:`camera_proxies`), ``{"memory": (P, D), "proxy_cluster": (P,),
    "proxy_camera": (P,)}``, row ``j`` the L2-normalised mean of proxy ``j``'s features (CAP).
    Labels -1 get no entry. ``normalize``: L2-normalise each feature row first, so that the
    entries are the normalised means of unit features, as the contrastive losses compare unit
    features (for raw step features, MSPLR's; cluster contrast's are unit already)."""
    if normalize:
        features = F.normalize(torch.as_tensor(features).float(), dim=1)
    if camids is None:
        memory = F.normalize(cluster_means(features, labels), dim=1)
        return {"memory": memory.numpy().astype(np.float32)}
    proxy, proxy_cluster, proxy_camera = camera_proxies(labels, camids)
    memory = F.normalize(cluster_means(features, proxy), dim=1)
    return {
        "memory": memory.numpy().astype(np.float32),
        "proxy_cluster": proxy_cluster,
        "proxy_camera": proxy_camera,
    }
