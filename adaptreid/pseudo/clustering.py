"""Clustering of target features into pseudo identities, behind one function: :func:`cluster`.

Three algorithms, as the two seed papers use them:

* **DBSCAN** (MSPLR, section 3.3.2; ``eps`` and ``min_samples = 4``), either on the
  euclidean (or cosine) distance of features, or on a precomputed distance such as the sparse
  k-reciprocal Jaccard distance of :func:`adaptreid.pseudo.kreciprocal.jaccard_distance`.
  Outliers get the label -1.
* **k-means** (MSPLR section 3.3.1) with ``k = floor(N / 15)`` by default (eq. 1). No outliers.
  :func:`kmeans` (default, torch): greedy k-means++ seeding on a sample, then Lloyd iterations
  with blocked matrix products (CPU or GPU); ``kmeans_impl="sklearn"`` runs scikit-learn's
  ``KMeans`` instead (on 12,936 x 2048 features with k = 862 its k-means++ alone takes tens of
  seconds on two cores; see BENCHMARKS.md).
* **HDBSCAN** (PAST, section 2.2) with ``min_cluster_size = S_min`` (10 in the
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

from typing import Any

import numpy as np

from ..errors import ConfigError
from .cluster_base import (
    HDBSCAN_IMPLS,
    KMEANS_IMPLS,
    check_distance,
    check_metric,
    finite_float,
    positive_float,
)
from .dbscan import dbscan_labels
from .hdbscan import hdbscan_labels
from .kmeans import kmeans_labels
from .settings import ClusterSettings

__all__ = ["cluster"]

_METHODS = ("dbscan", "kmeans", "hdbscan")


def cluster(
    features=None, settings: ClusterSettings | None = None, *, distance=None, **changes: Any
) -> np.ndarray:
    """Cluster target images into pseudo identities; returns (N,) labels, -1 for outliers.

    Args:
        features: (N, D) features (numpy or torch). Needed for k-means; for DBSCAN / HDBSCAN
            when no ``distance`` is given.
        distance: optional (N, N) precomputed distance, dense array or sparse matrix (e.g. the
            k-reciprocal Jaccard CSR, or a :func:`radius_neighbors_graph`). Sparse: missing
            entries mean "farther than eps" for DBSCAN and ``fill`` for HDBSCAN.
        settings: a :class:`~adaptreid.pseudo.settings.ClusterSettings` (default: its
            defaults), passed whole; ``changes`` are keyword changes of it
            (``cluster(x, method="kmeans", k=4)``). Its fields:

        method: "dbscan" (MSPLR section 3.3.2), "kmeans" (section 3.3.1, eq. 1) or "hdbscan"
            (PAST section 2.2).
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
    s = (settings or ClusterSettings()).replace(**changes)
    method, metric, min_samples = s.method, s.metric, s.min_samples
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    check_metric(metric)
    if features is None and distance is None:
        raise ConfigError("cluster() needs features or a precomputed distance")
    n = None if features is None else len(features)
    if distance is not None:
        check_distance(distance, n)
    if min_samples is not None and (int(min_samples) != min_samples or min_samples < 1):
        raise ConfigError(f"min_samples must be a positive integer, got {min_samples!r}")

    if method == "dbscan":
        eps = positive_float(s.eps, "DBSCAN eps")
        ms = 4 if min_samples is None else int(min_samples)
        return dbscan_labels(features, distance, eps, ms, metric, s.block_size, s.max_pairs)
    if method == "kmeans":
        if features is None:
            raise ConfigError("k-means needs features (it cannot use a precomputed distance)")
        if s.kmeans_impl not in KMEANS_IMPLS:
            raise ConfigError(f"kmeans_impl must be one of {KMEANS_IMPLS}, got {s.kmeans_impl!r}")
        return kmeans_labels(features, s.k, s.seed, s.n_init, s.kmeans_impl)
    if s.hdbscan_impl not in HDBSCAN_IMPLS:
        raise ConfigError(f"hdbscan_impl must be one of {HDBSCAN_IMPLS}, got {s.hdbscan_impl!r}")
    mcs = s.min_cluster_size
    if int(mcs) != mcs or mcs < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {mcs!r}")
    return hdbscan_labels(
        features,
        distance,
        int(mcs),
        None if min_samples is None else int(min_samples),
        metric,
        finite_float(s.fill, "fill"),
        s.hdbscan_impl,
        int(s.hdbscan_dense_limit),
    )
