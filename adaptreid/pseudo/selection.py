"""Cluster selection (MSPLR, section 3.4).

Two rules, each switchable:

* **size**: drop clusters with fewer than K images, K being the images per identity of the
  P x K sampler (eq. 3): a batch needs K images of every sampled identity;
* **cameras**: drop clusters seen by a single camera: training on them would teach nothing
  about camera-invariance, and single-camera clusters are often "same camera, same
  background" rather than "same person" (the shift camera normalisation, section 3.5, fights).

A target with fewer cameras than ``min_cameras`` (e.g. a single-camera dataset) cannot satisfy
the camera rule at all; instead of dropping every cluster, the rule is skipped with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from adaptreid.errors import ConfigError
from adaptreid.pseudo.cluster_base import relabel

__all__ = ["cameras_per_cluster", "select_clusters"]


def _int_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    return labels.astype(np.int64, copy=False)


def cameras_per_cluster(labels, camids) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster_ids, n_cameras)``: the distinct cameras of each cluster (outliers ignored)."""
    labels = _int_labels(labels)
    cams = np.asarray(camids).reshape(-1)
    if cams.shape[0] != labels.shape[0]:
        raise ValueError(f"camids has {cams.shape[0]} entries but labels has {labels.shape[0]}")
    valid = labels >= 0
    ids, inv = np.unique(labels[valid], return_inverse=True)
    _, cam_code = np.unique(cams[valid], return_inverse=True)
    n_codes = int(cam_code.max(initial=0)) + 1
    pairs = np.unique(inv.reshape(-1) * n_codes + cam_code.reshape(-1))
    n_cams = np.bincount(pairs // n_codes, minlength=len(ids))
    return ids, n_cams


def select_clusters(
    labels,
    camids=None,
    *,
    min_size: int = 4,
    min_cameras: int = 2,
    enforce_size: bool = True,
    enforce_cameras: bool = True,
) -> tuple[np.ndarray, dict]:
    """Keep the reliable clusters (MSPLR section 3.4); the others become outliers (-1).

    Args:
        labels: (N,) cluster labels, -1 = outlier.
        camids: (N,) camera ids; required when the camera rule is on.
        min_size: K, the smallest cluster kept (the sampler's images per identity).
        min_cameras: the fewest distinct cameras a kept cluster must have.
        enforce_size: apply the size rule.
        enforce_cameras: apply the camera rule (skipped, with a warning, when the whole
            target has fewer than ``min_cameras`` cameras).

    Returns:
        ``(new_labels, info)``: labels with dropped clusters set to -1 and kept clusters
        relabelled ``0..C'-1`` in order of first appearance; ``info`` counts clusters
        before/after, those failing each rule (a cluster can fail both), images kept, and
        whether the camera rule was skipped.
    """
    labels = _int_labels(labels)
    if int(min_size) != min_size or int(min_cameras) != min_cameras:
        raise ConfigError(
            f"min_size and min_cameras must be integers, got {min_size!r}, {min_cameras!r}"
        )
    valid = labels >= 0
    ids, inv = np.unique(labels[valid], return_inverse=True)
    inv = inv.reshape(-1)
    sizes = np.bincount(inv, minlength=len(ids))
    keep = np.ones(len(ids), dtype=bool)

    small = sizes < min_size if enforce_size else np.zeros(len(ids), dtype=bool)
    keep &= ~small

    camera_rule_skipped = False
    few_cams = np.zeros(len(ids), dtype=bool)
    if enforce_cameras and min_cameras > 1:
        if camids is None:
            raise ConfigError(
                "the >= 2-camera cluster rule needs camera ids: pass camids, or switch the "
                "rule off (enforce_cameras=False)"
            )
        n_dataset_cams = len(np.unique(np.asarray(camids)))
        if n_dataset_cams < min_cameras:
            camera_rule_skipped = True
            warnings.warn(
                f"cluster selection: the target has {n_dataset_cams} camera(s) but the camera "
                f"rule asks for >= {min_cameras} cameras per cluster; skipping the camera rule "
                "instead of dropping every cluster",
                UserWarning,
                stacklevel=2,
            )
        else:
            _, n_cams = cameras_per_cluster(labels, camids)
            few_cams = n_cams < min_cameras
            keep &= ~few_cams

    new = np.full(labels.shape, -1, dtype=np.int64)
    mask = np.zeros(labels.shape, dtype=bool)
    mask[valid] = keep[inv]
    new[mask] = labels[mask]
    new = relabel(new)
    info = {
        "clusters_before": int(len(ids)),
        "clusters_after": int(keep.sum()),
        "dropped_by_size": int(small.sum()),
        "dropped_by_cameras": int(few_cams.sum()),
        "images_clustered_before": int(valid.sum()),
        "images_kept": int(mask.sum()),
        "min_size": int(min_size) if enforce_size else None,
        "min_cameras": int(min_cameras) if enforce_cameras and not camera_rule_skipped else None,
        "camera_rule_skipped": camera_rule_skipped,
    }
    return new, info
