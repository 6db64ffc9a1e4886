"""The pseudo-label pipeline of MSPLR (sections 3.3-3.5) in one call, and eps tuning.

:func:`make_pseudo_labels`::

    features --(eq. 4, camera normalisation)--> distance (euclidean / cosine / Jaccard)
             --(DBSCAN | k-means (eq. 1) | HDBSCAN)--> clusters
             --(>= K images, >= 2 cameras: section 3.4)--> pseudo-labels + statistics
             (+ label quality against true identities when given: analysis only)

:func:`sweep_eps` runs the same pipeline for many DBSCAN eps values, computing the expensive
part (the neighbourhood graph, or the Jaccard distance) once, and :func:`recommend_eps` picks
one without ground truth. Together they answer "how do I tune eps": MSPLR itself "performed a
simple search in an early training step to determine a value that would balance the number of
clusters selected and the number of outliers" (section 3.3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from adaptreid.errors import ConfigError, TrainingError
from adaptreid.pseudo.camera_norm import camera_normalize
from adaptreid.pseudo.quality import label_quality, pseudo_label_stats
from adaptreid.pseudo.selection import select_clusters

from . import dbscan
from .clustering import cluster
from .settings import PseudoSettings

__all__ = [
    "JACCARD_EPS_GRID",
    "PseudoLabels",
    "auto_eps",
    "make_pseudo_labels",
    "prepare_features",
    "recommend_eps",
    "sweep_eps",
]

_DISTANCES = ("euclidean", "cosine", "jaccard")


@dataclass
class PseudoLabels:
    """Pseudo-labels of the target training images and how they were made.

    Attributes:
        labels: (N,) int64, ``0..C-1`` for the selected clusters, -1 for images left out
            (outliers and dropped clusters).
        stats: label-free statistics (:func:`adaptreid.pseudo.quality.pseudo_label_stats`)
            plus ``clusters_before_selection`` and the selection counts.
        quality: :func:`adaptreid.pseudo.quality.label_quality` of ``labels`` when true
            identities were given (analysis only), else None.
        params: the resolved parameters (method, eps, k, ...), for logs and reports.
    """

    labels: np.ndarray
    stats: dict
    quality: dict | None = None
    params: dict = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.stats["num_clusters"])


# --------------------------------------------------------------------------------------------
# shared steps
# --------------------------------------------------------------------------------------------


def _check_common(features, camids, distance, true_pids):
    if distance not in _DISTANCES:
        raise ConfigError(f"distance must be one of {_DISTANCES}, got {distance!r}")
    n = len(features)
    if camids is not None and len(camids) != n:
        raise ConfigError(f"{len(camids)} camera ids for {n} features")
    if true_pids is not None and len(true_pids) != n:
        raise ConfigError(f"{len(true_pids)} true identities for {n} features")


def _array1d(values):
    """(N,) numpy copy-free view of camera ids / identities (numpy, list or tensor)."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def prepare_features(features, camids, camera_norm: bool = True, l2_after: bool = True):
    """The rows that are clustered: MSPLR eq. 4 per camera (``camera_norm``), then each row
    L2-normalised again (``l2_after``; plain L2 normalisation when camera normalisation is
    off). The Jaccard distance given to :func:`make_pseudo_labels` / :func:`auto_eps` as
    ``jaccard=`` must be computed on these rows."""
    if camera_norm:
        if camids is None:
            raise ConfigError("camera normalisation needs camera ids (or camera_norm=False)")
        return camera_normalize(features, camids, l2_after=l2_after)
    if not l2_after:
        return features
    if isinstance(features, torch.Tensor):
        return torch.nn.functional.normalize(features.detach().float(), dim=1)
    x = np.asarray(features, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _jaccard(x, k1: int, k2: int, given=None) -> sp.csr_matrix:
    """The k-reciprocal Jaccard distance of the prepared rows ``x``, or ``given`` (computed
    once per step by the caller and reused by auto-eps, clustering and PAST's ranking)."""
    if given is not None:
        if given.shape != (len(x), len(x)):
            raise ConfigError(
                f"jaccard= is {given.shape[0]} x {given.shape[1]}, expected {len(x)} x {len(x)}"
            )
        return given
    from adaptreid.pseudo.kreciprocal import jaccard_distance

    # computed in this process: these functions may run on one rank only (rank 0 makes the
    # labels); the loop shards the step's Jaccard across ranks itself and passes it here
    return jaccard_distance(x, k1=k1, k2=k2, distributed=False)


def _selected(labels, camids, st: PseudoSettings):
    """Cluster selection (section 3.4) as ``st`` says; a threshold of 1 is a rule off."""
    if not st.select:
        n = int(len(np.unique(labels[labels >= 0])))
        info = {
            "clusters_before": n,
            "clusters_after": n,
            "dropped_by_size": 0,
            "dropped_by_cameras": 0,
            "camera_rule_skipped": False,
        }
        return labels, info
    return select_clusters(
        labels,
        camids,
        min_size=st.min_size,
        min_cameras=st.min_cameras,
        enforce_size=st.min_size > 1,
        enforce_cameras=st.min_cameras > 1,
    )


def _prepared(features, cams, st: PseudoSettings, prepared=None):
    """The rows that are clustered: ``prepared`` when the caller has them (checked), else
    :func:`prepare_features` of ``features``."""
    if prepared is None:
        return prepare_features(features, cams, st.camera_norm, st.l2_after)
    if tuple(prepared.shape) != tuple(np.shape(features)):
        raise ConfigError(
            f"prepared= is {tuple(prepared.shape)}, expected the features' shape "
            f"{tuple(np.shape(features))}"
        )
    return prepared


def _sweep_min_samples(st: PseudoSettings) -> int:
    """DBSCAN's min_samples in an eps sweep: the settings', 4 (MSPLR) when unset."""
    return 4 if st.cluster.min_samples is None else int(st.cluster.min_samples)


def _suggest_eps(kth: np.ndarray, eps: float, distance: str) -> float | None:
    """A larger eps from the distances to the min_samples-th neighbour: their median (about
    half the images become core points), else their 90% quantile, rounded up to 2 decimals;
    None when neither is above the current eps."""
    for value in np.quantile(kth, [0.5, 0.9]):
        suggestion = max(math.ceil(float(value) * 100 - 1e-9) / 100, 0.01)
        if distance == "jaccard":
            suggestion = min(suggestion, 0.99)
        if suggestion > eps:
            return suggestion
    return None


def _no_cluster_error(method, raw, info, params, kth=None) -> TrainingError:
    n_raw = int(len(np.unique(raw[raw >= 0])))
    name = {"dbscan": "DBSCAN", "kmeans": "k-means", "hdbscan": "HDBSCAN"}[method]
    msg = f"no pseudo-label cluster survived: {name} found {n_raw} cluster(s)"
    if n_raw:
        msg += (
            f" before selection, and cluster selection dropped all of them "
            f"({info['dropped_by_size']} with < {params['min_size']} images, "
            f"{info['dropped_by_cameras']} seen by < {params['min_cameras']} cameras)"
        )
        if info["dropped_by_cameras"]:
            msg += (
                "; camera normalisation (camera_norm=True) helps clusters span cameras"
                if not params["camera_norm"]
                else "; a smaller min_cameras relaxes the camera rule"
            )
    msg += "."
    if method == "dbscan" and kth is not None:
        ms = params["min_samples"]
        q10, med, q90 = np.quantile(kth, [0.1, 0.5, 0.9])
        suggestion = _suggest_eps(kth, params["eps"], params["distance"])
        msg += (
            f" With eps={params['eps']} and min_samples={ms}, the distance of each image to "
            f"its {ms}-th neighbour (itself included) has median {med:.3f} (10%: {q10:.3f}, "
            f"90%: {q90:.3f}); at eps = the median about half the images are core points: "
        )
        msg += f"try eps={suggestion:.2f}" if suggestion is not None else "try a larger eps"
        msg += ", or run `adaptreid cluster --eps-sweep` to choose."
        if params["distance"] == "jaccard" and med >= 1.0:
            msg += " Most images share no k-reciprocal neighbour: increase k1."
    elif method == "hdbscan":
        msg += f" Try a smaller min_cluster_size (now {params['min_cluster_size']})."
    elif method == "kmeans":
        msg += " Try a smaller k (larger clusters) or relax the selection rules."
    return TrainingError(msg)


def _kth(x, graph, params) -> np.ndarray:
    if params["distance"] == "jaccard":
        return dbscan.kth_neighbor_distance(distance=graph, k=params["min_samples"])
    return dbscan.kth_neighbor_distance(x, k=params["min_samples"], metric=params["distance"])


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def make_pseudo_labels(
    features,
    camids,
    settings: PseudoSettings | None = None,
    *,
    true_pids=None,
    jaccard=None,
    prepared=None,
    **changes: Any,
) -> PseudoLabels:
    """Pseudo-labels of the target training set: the MSPLR pipeline (Fig. 1).

    1. camera-guided normalisation (section 3.5, eq. 4), rows re-L2-normalised by default
       (``l2_after``; see :mod:`adaptreid.pseudo.camera_norm` for why);
    2. clustering (section 3.3): DBSCAN (``eps``, ``min_samples`` = 4) on the euclidean or
       cosine distance of the normalised features or on their k-reciprocal Jaccard distance
       (``k1``, ``k2``); k-means with ``k = N // 15`` by default (eq. 1); or HDBSCAN
       (``min_cluster_size``, PAST's S_min; on the Jaccard distance with
       ``distance="jaccard"``, as PAST section 2.2 does);
    3. cluster selection (section 3.4): keep clusters with >= ``min_size`` images (the
       sampler's K) and >= ``min_cameras`` cameras; ``min_size=1`` / ``min_cameras=1`` switch
       a rule off, ``select=False`` both;
    4. statistics, and label quality when ``true_pids`` is given (analysis only: the true
       identities never influence the labels).

    Args:
        features: (N, D) target training features (numpy or torch, any device).
        camids: (N,) camera ids (may be None with ``camera_norm=False`` and no camera rule).
        settings: the :class:`~adaptreid.pseudo.settings.PseudoSettings` (default: its
            defaults), passed whole down to clustering; ``changes``: keyword changes of it
            (``eps=0.5``, ``method="kmeans"``, ...).
        true_pids: optional (N,) true identities, for ``quality`` only.
        jaccard: the Jaccard distance of the prepared rows (:func:`prepare_features`), when
            the caller already has it; computed here otherwise.
        prepared: the rows :func:`prepare_features` makes of ``features`` under ``settings``,
            when the caller already has them (one step prepares them once).

    k-means cannot cluster a precomputed distance: with ``method="kmeans"`` the prepared
    features are clustered whatever ``distance`` says (PAST Table 2's k-means row), and
    ``params["distance"]`` records ``"euclidean"``.

    Returns:
        :class:`PseudoLabels`.

    Raises:
        ConfigError: invalid options.
        TrainingError: no cluster survives; the message reports the clusters found before
            selection, the distribution of distances to the ``min_samples``-th neighbour and
            a suggested eps.
    """
    st = (settings or PseudoSettings()).replace(**changes)
    c = st.cluster
    method, distance, eps = c.method, st.distance, c.eps
    _check_common(features, camids, distance, true_pids)
    cams = _array1d(camids)
    if method not in ("dbscan", "kmeans", "hdbscan"):
        raise ConfigError(f"method must be 'dbscan', 'kmeans' or 'hdbscan', got {method!r}")
    if method == "kmeans":
        distance = "euclidean"  # k-means clusters the (prepared) features themselves
    if method == "dbscan" and distance == "jaccard" and not 0 < eps < 1:
        raise ConfigError(
            f"DBSCAN on the Jaccard distance needs 0 < eps < 1 (distances lie in [0, 1]), "
            f"got {eps!r}"
        )
    min_samples = c.min_samples
    if min_samples is None and method == "dbscan":
        min_samples = 4
    n = len(features)
    params = {
        "method": method,
        "distance": distance,
        "camera_norm": bool(st.camera_norm),
        "l2_after": bool(st.l2_after),
        "eps": float(eps) if method == "dbscan" else None,
        "min_samples": min_samples,
        "k": (c.k if c.k is not None else max(1, n // 15)) if method == "kmeans" else None,
        "min_cluster_size": int(c.min_cluster_size) if method == "hdbscan" else None,
        "k1": int(st.k1) if distance == "jaccard" else None,
        "k2": int(st.k2) if distance == "jaccard" else None,
        "select": bool(st.select),
        "min_size": int(st.min_size),
        "min_cameras": int(st.min_cameras),
        "seed": int(c.seed),
    }

    x = _prepared(features, cams, st, prepared)
    graph = _jaccard(x, st.k1, st.k2, jaccard) if distance == "jaccard" else None
    raw = cluster(
        None if graph is not None and method == "dbscan" else x,
        c.replace(
            min_samples=min_samples,
            k=params["k"],
            metric="cosine" if distance == "cosine" else "euclidean",
        ),
        distance=graph,
    )
    labels, info = _selected(raw, cams, st)
    if not (labels >= 0).any():
        kth = _kth(x, graph, params) if method == "dbscan" else None
        raise _no_cluster_error(method, raw, info, params, kth)

    stats = pseudo_label_stats(labels, cams)
    stats["clusters_before_selection"] = info["clusters_before"]
    stats["dropped_by_size"] = info["dropped_by_size"]
    stats["dropped_by_cameras"] = info["dropped_by_cameras"]
    stats["camera_rule_skipped"] = info["camera_rule_skipped"]
    quality = None if true_pids is None else label_quality(labels, _array1d(true_pids))
    return PseudoLabels(labels=labels, stats=stats, quality=quality, params=params)


def sweep_eps(
    features,
    camids,
    eps_values,
    settings: PseudoSettings | None = None,
    *,
    true_pids=None,
    jaccard=None,
    prepared=None,
    **changes: Any,
) -> list[dict]:
    """DBSCAN pseudo-labels for each eps in ``eps_values``: one row of statistics per eps.

    The normalisation and the distance graph are computed once: the euclidean / cosine
    radius graph at the largest eps (each smaller eps is a filter of it), or the Jaccard
    distance (independent of eps). Each eps then only costs a DBSCAN pass over a sparse graph.

    ``settings`` / ``changes`` / ``jaccard`` / ``prepared``: as in :func:`make_pseudo_labels`
    (of its clustering part only ``min_samples`` and ``block_size`` are read).

    Returns:
        rows sorted by eps, each a dict: ``eps``, ``clusters_before`` (DBSCAN's clusters),
        ``clusters`` (after selection), ``outliers`` (images left out), ``portion_kept``,
        ``multi_camera_fraction``, ``images_kept``, ``score`` (the label-free criterion of
        :func:`recommend_eps`) and, with ``true_pids``, ``precision``, ``recall``, ``f1``,
        ``nmi``, ``ari`` of the selected labels.
    """
    st = (settings or PseudoSettings()).replace(**changes)
    distance, min_samples = st.distance, _sweep_min_samples(st)
    _check_common(features, camids, distance, true_pids)
    cams = _array1d(camids)
    eps_values = sorted({round(float(e), 10) for e in eps_values})  # arange noise: 0.88000..02
    if not eps_values or eps_values[0] <= 0:
        raise ConfigError(f"eps values must be positive, got {eps_values!r}")
    if distance == "jaccard" and eps_values[-1] >= 1:
        raise ConfigError(f"Jaccard distances lie in [0, 1]: eps must be < 1, got {eps_values}")
    x = _prepared(features, cams, st, prepared)
    if distance == "jaccard":
        graph = _jaccard(x, st.k1, st.k2, jaccard)
    else:
        graph = dbscan.radius_neighbors_graph(
            x, eps_values[-1], metric=distance, block_size=st.cluster.block_size
        )
    truth = _array1d(true_pids)
    rows = []
    for eps in eps_values:
        raw = cluster(distance=graph, method="dbscan", eps=eps, min_samples=min_samples)
        labels, info = _selected(raw, cams, st)
        stats = pseudo_label_stats(labels, cams)
        row = {
            "eps": eps,
            "clusters_before": info["clusters_before"],
            "clusters": stats["num_clusters"],
            "outliers": stats["num_outliers"],
            "portion_kept": stats["portion_kept"],
            "multi_camera_fraction": stats["multi_camera_fraction"],
            "images_kept": stats["num_images"] - stats["num_outliers"],
            "max_cluster_size": stats["size_max"],
            "median_cluster_size": stats["size_median"],
            "score": stats["num_clusters"] * stats["portion_kept"],
        }
        if truth is not None:
            q = label_quality(labels, truth)
            row.update({key: q[key] for key in ("precision", "recall", "f1", "nmi", "ari")})
        rows.append(row)
    return rows


#: :func:`recommend_eps` ignores an eps whose largest kept cluster is more than this many times
#: the median kept cluster: the sign of DBSCAN chaining different people into one cluster
#: (``pseudo.giant_factor``'s default).
GIANT_CLUSTER_FACTOR = 5.0


def _chained(row: dict, factor: float = GIANT_CLUSTER_FACTOR) -> bool:
    """A giant cluster: > ``factor`` x the median cluster, or more than half of the kept
    images in one cluster (with few clusters the median is itself giant)."""
    largest = row.get("max_cluster_size", 0)
    med = row.get("median_cluster_size") or 0
    kept = row.get("images_kept", 0)
    return (bool(med) and largest > factor * med) or (kept >= 50 and largest > 0.5 * kept)


def _top(rows: list[dict]) -> dict:
    """The row of the best score; ties go to the smaller eps."""
    return max(rows, key=lambda r: (r["score"], -r["eps"]))


def recommend_eps(
    rows: list[dict],
    max_portion: float = 1.0,
    min_portion: float = 0.0,
    giant_factor: float = GIANT_CLUSTER_FACTOR,
) -> tuple[float, str]:
    """Pick an eps from :func:`sweep_eps` rows without ground truth.

    Rule: maximise ``score = selected clusters x portion of images kept``, over the eps
    whose largest kept cluster is at most ``giant_factor`` (``pseudo.giant_factor``, default
    :data:`GIANT_CLUSTER_FACTOR`) times the median one (all eps if none is); ties go to the
    smaller eps. The score is MSPLR's "balance the number of clusters selected and the number
    of outliers" (section 3.3.2) made explicit: growing eps
    first adds images to clusters and lets more clusters pass the >= K images / >= 2 cameras
    rules (both terms grow), until clusters of different people merge. Merging does not
    always lower the score (a giant cluster keeps many images), so the giant-cluster guard
    detects it directly: DBSCAN's single-link chaining shows as one cluster far larger than
    the typical one (on PKU-Reid with a Market-trained MobileNetV2, the largest cluster jumps
    from 2.7x to 6x the median between two consecutive eps of a sweep, while pairwise F1
    falls from 0.68 to 0.43).

    The rule never reads ``precision`` / ``f1``: with ground truth, the sweep table shows them
    next to the score so that users can judge the rule on their data.

    ``max_portion`` < 1 (``pseudo.max_kept_growth``) leaves out the eps that keep more than
    that portion of the images; when every eps with a cluster does, the one keeping the
    fewest is taken.

    ``min_portion`` > 0 (``pseudo.kept_never_shrinks``: the last labels' portion) leaves out
    the eps that keep fewer images than that, among those the giant-cluster guard admits; when
    none of them keeps as many, the one keeping the most is taken. The guard comes first: a
    floor never forces a chained eps.

    Raises:
        TrainingError: no eps of the sweep produced a selected cluster.
    """
    if not rows:
        raise ConfigError("recommend_eps needs at least one sweep row")
    if not 0 < max_portion <= 1:
        raise ConfigError(f"max_portion must be in (0, 1], got {max_portion}")
    if not 0 <= min_portion <= 1:
        raise ConfigError(f"min_portion must be in [0, 1], got {min_portion}")
    if not giant_factor > 1:
        raise ConfigError(f"giant_factor must be > 1, got {giant_factor}")
    capped = [r for r in rows if r["score"] > 0 and r["portion_kept"] > max_portion]
    under = [r for r in rows if r["portion_kept"] <= max_portion]
    if capped and not any(r["score"] > 0 for r in under):
        under = [min(capped, key=lambda r: (r["portion_kept"], r["eps"]))]
    admissible = [r for r in under if r["score"] > 0 and not _chained(r, giant_factor)]
    # the floor is named in the reason only where it changed the choice
    below_floor = bool(admissible) and _top(admissible)["portion_kept"] < min_portion
    if below_floor:
        floored = [r for r in admissible if r["portion_kept"] >= min_portion]
        admissible = floored or [max(admissible, key=lambda r: (r["portion_kept"], -r["eps"]))]
    best = _top(admissible or under or rows)
    if best["score"] <= 0:
        top = max(r["eps"] for r in rows)
        raise TrainingError(
            f"no eps in the sweep ({min(r['eps'] for r in rows)} .. {top}) gave a selected "
            f"cluster; try larger eps values (above {top})"
        )
    reason = (
        f"eps={best['eps']:g} maximises selected clusters x portion kept "
        f"({best['clusters']} clusters x {best['portion_kept']:.1%} kept = {best['score']:.1f}); "
        "a label-free rule balancing clusters and outliers (MSPLR section 3.3.2)"
    )
    if capped:
        reason += (
            f", among the eps that keep at most {max_portion:.1%} of the images "
            "(pseudo.max_kept_growth)"
        )
    if below_floor:
        reason += (
            f", among the eps that keep at least the last labels' {min_portion:.1%} of the "
            "images (pseudo.kept_never_shrinks)"
            if best["portion_kept"] >= min_portion
            else f"; no admissible eps keeps the last labels' {min_portion:.1%} of the images "
            "(pseudo.kept_never_shrinks): the one keeping the most"
        )
    chained = [r["eps"] for r in under if r["score"] > 0 and _chained(r, giant_factor)]
    if chained and admissible:
        reason += (
            f", among the eps whose largest cluster is at most {giant_factor:g}x the "
            f"median (from eps={min(chained):g} DBSCAN chains people into giant clusters)"
        )
    if "f1" in best:
        f1_best = max(rows, key=lambda r: r["f1"])
        reason += (
            f"; with ground truth its pairwise F1 is {best['f1']:.3f} "
            f"(best F1 {f1_best['f1']:.3f} at eps={f1_best['eps']:g})"
        )
    return float(best["eps"]), reason


#: :func:`auto_eps`'s candidates on the Jaccard distance: a fixed grid. Jaccard distances lie in
#: [0, 1] and keep their scale from step to step, unlike the quantiles of the k-th neighbour
#: distance, whose range collapses as a model's features tighten (Market -> DukeMTMC-reID,
#: MobileNetV2, step 3: the 60% quantile is 0.22 while step 2 chose eps 0.31).
JACCARD_EPS_GRID = tuple(round(0.05 + 0.025 * i, 3) for i in range(29))  # 0.05 .. 0.75


def auto_eps(
    features,
    camids,
    settings: PseudoSettings | None = None,
    *,
    num: int = 15,
    true_pids=None,
    jaccard=None,
    prepared=None,
    **changes: Any,
) -> tuple[float, list[dict], str]:
    """Choose DBSCAN's eps without labels: sweep ``num`` candidates and apply
    :func:`recommend_eps`. Returns ``(eps, sweep rows, reason)``.

    On the euclidean / cosine distance the candidates are quantiles (5% .. 60%) of each
    image's distance to its ``min_samples``-th neighbour in the space DBSCAN will see: from
    "almost no core point" to a bit more than half of the images being core points, so the
    sweep brackets the useful eps whatever the backbone's feature scale, and its radius graph
    stays bounded. Larger eps are left out: there most images are core points and DBSCAN
    chains different people together (on Market-1501 with a weak PKU-trained model, the 95%
    quantile gives 2 clusters holding 96% of the images). On the Jaccard distance, whose
    scale does not drift, they are the fixed grid :data:`JACCARD_EPS_GRID`.
    ``true_pids`` only adds quality columns to the rows (never used to choose).
    """
    st = (settings or PseudoSettings()).replace(**changes)
    distance = st.distance
    _check_common(features, camids, distance, true_pids)
    cams = _array1d(camids)
    x = _prepared(features, cams, st, prepared)
    params = {"distance": distance, "min_samples": _sweep_min_samples(st)}
    graph = _jaccard(x, st.k1, st.k2, jaccard) if distance == "jaccard" else None
    kth = _kth(x, graph, params)
    kth = kth[np.isfinite(kth) & (kth > 0)]
    if distance == "jaccard":
        kth = kth[kth < 1]
    if not len(kth):
        raise TrainingError(
            "auto eps: no image has a neighbour at a usable distance (all features identical, "
            "or no k-reciprocal neighbours: increase k1)"
        )
    if distance == "jaccard":
        candidates = [float(e) for e in JACCARD_EPS_GRID]
    else:
        qs = np.quantile(kth, np.linspace(0.05, 0.6, num))
        candidates = sorted({v for q in qs if (v := float(f"{q:.4g}")) > 0})
    rows = sweep_eps(
        features, camids, candidates, st, true_pids=true_pids, jaccard=graph, prepared=x
    )
    eps, reason = recommend_eps(rows, st.max_portion, st.min_portion, st.giant_factor)
    return eps, rows, reason
