"""Pseudo-label statistics and, when ground truth is known, pseudo-label quality.

:func:`pseudo_label_stats` needs no labels: clusters, outliers, the portion of images kept
(the "Portion" column of MSPLR Table 4) and the fraction of clusters seen by >= 2
cameras (what the camera rule of section 3.4 and the normalisation of section 3.5 act on).

:func:`label_quality` compares pseudo-labels with the true identities. It is for analysis
only (tuning eps, comparing clustering methods, plotting label quality over iterations):
nothing in adaptreid trains on true target identities.

Pairwise metrics count unordered pairs of images:

* precision = (pairs in the same cluster *and* with the same identity) / (pairs in the same
  cluster): how pure the clusters are;
* recall = (pairs in the same cluster and with the same identity) / (pairs with the same
  identity): how completely identities are gathered;
* F1 = their harmonic mean.

Outliers (label -1) are handled in one of two ways (``include_outliers``):

* ``False`` (default): only the kept images are evaluated - the set the model trains on -
  so recall is over same-identity pairs *among kept images*. This measures the quality of
  what is used; the quantity of it is ``portion_kept``.
* ``True``: every image is evaluated and each outlier is its own singleton cluster, so the
  identities' pairs lost to the outliers lower recall (and NMI / ARI).

All pair counts come from the contingency table (cluster x identity), never from an N x N
matrix: O(N) memory. A ratio whose denominator is 0 (no pair) is reported as 0.0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_quality", "pair_counts", "pseudo_label_stats"]


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pair_counts(pred_labels, true_labels) -> tuple[int, int, int]:
    """``(same_both, same_pred, same_true)``: unordered pairs in the same predicted cluster and
    with the same true label, in the same predicted cluster, with the same true label.

    Every distinct value of ``pred_labels`` is a cluster (-1 included: filter or rename
    outliers first).
    """
    pred = np.asarray(pred_labels).reshape(-1)
    true = np.asarray(true_labels).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} predicted labels but {true.shape[0]} true labels")
    if pred.size == 0:
        return 0, 0, 0
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
    _, cell = np.unique(p * (int(t.max()) + 1) + t, return_counts=True)
    return _pairs(cell), _pairs(np.bincount(p)), _pairs(np.bincount(t))


def _ratio(a: int, b: int) -> float:
    return float(a) / float(b) if b > 0 else 0.0


def label_quality(pred_labels, true_pids, *, include_outliers: bool = False) -> dict:
    """Quality of pseudo-labels against the true identities (analysis only, never training).

    Args:
        pred_labels: (N,) pseudo-labels, -1 = outlier.
        true_pids: (N,) true identities.
        include_outliers: ``False``: evaluate the kept images only; ``True``: all images,
            each outlier a singleton cluster (see the module docstring).

    Returns:
        dict with ``precision``, ``recall``, ``f1`` (pairwise), ``nmi`` (normalised mutual
        information, arithmetic mean), ``ari`` (adjusted Rand index), ``num_images`` (images
        evaluated), ``num_true_ids`` (identities among them), ``include_outliers``. All metrics
        are 0.0 when no image is evaluated.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    pred = np.asarray(pred_labels).reshape(-1).astype(np.int64)
    true = np.asarray(true_pids).reshape(-1)
    if pred.shape[0] != true.shape[0]:
        raise ValueError(f"{pred.shape[0]} pseudo-labels but {true.shape[0]} true identities")
    if include_outliers:
        out = pred < 0
        pred = pred.copy()
        base = int(pred.max(initial=-1)) + 1
        pred[out] = base + np.arange(int(out.sum()))  # each outlier its own cluster
    else:
        keep = pred >= 0
        pred, true = pred[keep], true[keep]

    result = {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "nmi": 0.0,
        "ari": 0.0,
        "num_images": int(pred.shape[0]),
        "num_true_ids": int(len(np.unique(true))),
        "include_outliers": bool(include_outliers),
    }
    if pred.shape[0] == 0:
        return result
    both, same_pred, same_true = pair_counts(pred, true)
    precision, recall = _ratio(both, same_pred), _ratio(both, same_true)
    result["precision"] = precision
    result["recall"] = recall
    result["f1"] = _ratio(2 * both, same_pred + same_true)  # = 2PR / (P + R)
    result["nmi"] = float(normalized_mutual_info_score(true, pred))
    result["ari"] = float(adjusted_rand_score(true, pred))
    return result


def pseudo_label_stats(labels, camids=None) -> dict:
    """Label-free statistics of pseudo-labels.

    Returns:
        dict with ``num_images``, ``num_clusters``, ``num_outliers``, ``portion_kept``
        (fraction of images with a label >= 0: MSPLR Table 4's "Portion"),
        ``multi_camera_fraction`` (fraction of clusters with images from >= 2 cameras; None
        without ``camids``, 0.0 without clusters), ``num_cameras``, and the cluster size
        ``size_min`` / ``size_mean`` / ``size_median`` / ``size_max`` (0 without clusters).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    n = int(labels.shape[0])
    valid = labels >= 0
    _, sizes = np.unique(labels[valid], return_counts=True)
    stats = {
        "num_images": n,
        "num_clusters": int(len(sizes)),
        "num_outliers": int(n - valid.sum()),
        "portion_kept": _ratio(int(valid.sum()), n),
        "multi_camera_fraction": None,
        "num_cameras": None,
        "size_min": int(sizes.min()) if len(sizes) else 0,
        "size_mean": float(sizes.mean()) if len(sizes) else 0.0,
        "size_median": float(np.median(sizes)) if len(sizes) else 0.0,
        "size_max": int(sizes.max()) if len(sizes) else 0,
    }
    if camids is not None:
        from adaptreid.pseudo.selection import cameras_per_cluster

        _, n_cams = cameras_per_cluster(labels, camids)
        stats["multi_camera_fraction"] = _ratio(int((n_cams >= 2).sum()), len(n_cams))
        stats["num_cameras"] = int(len(np.unique(np.asarray(camids))))
    return stats
