"""One step's target features and the pseudo-labels the config asks for, each computed once.

:class:`StepFeatures` is what a method's ``pseudo_labels`` receives. It holds the features of
every target training image (extracted by the loop with the current model) and computes on
demand, at most once per step: the rows that are clustered (camera normalisation, eq. 4 of
MSPLR, then L2), their k-reciprocal Jaccard distance (used by auto-eps, the clustering and
PAST's ranking alike), and :meth:`StepFeatures.cluster`, the config-driven pipeline
auto-eps -> DBSCAN / HDBSCAN / k-means -> cluster selection of ``adaptreid.pseudo``.
``seconds`` records where the time went (``distance``, ``cluster``) for the step's record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..config import PseudoConfig
from ..errors import ConfigError
from ..pseudo.kreciprocal import jaccard_distance
from ..pseudo.labels import PseudoLabels, auto_eps, make_pseudo_labels, prepare_features
from .extract import Features

log = logging.getLogger("adaptreid")

__all__ = ["SWEEP_KEYS", "StepFeatures", "hdbscan_sizes", "pseudo_label_kwargs"]

#: HDBSCAN's min_cluster_size in the authors' released PAST code (the ``hdbscan`` default).
RELEASED_CODE_MIN_CLUSTER_SIZE = 5


def hdbscan_sizes(p: PseudoConfig) -> tuple[int, int | None]:
    """``(min_cluster_size, min_samples)`` for scikit-learn's HDBSCAN from PAST's S_min
    (section 3.4) read as ``p.s_min_reading`` says (see :class:`~adaptreid.config.PseudoConfig`).

    * ``min_cluster_size``: S_min is the smallest cluster; min_samples is left to default
      to the same value (scikit-learn and the ``hdbscan`` package agree on that default);
    * ``released_code``: S_min is the ``hdbscan`` package's ``min_samples``, which does not
      count the point itself, i.e. scikit-learn's ``S_min + 1``; min_cluster_size 5.
    """
    if p.s_min < 1:
        raise ConfigError(f"pseudo.s_min must be >= 1, got {p.s_min}")
    if p.s_min_reading == "min_cluster_size":
        if p.s_min < 2:
            raise ConfigError("pseudo.s_min must be >= 2 when it is HDBSCAN's min_cluster_size")
        return p.s_min, None
    if p.s_min_reading == "released_code":
        return RELEASED_CODE_MIN_CLUSTER_SIZE, p.s_min + 1
    raise ConfigError(
        f"pseudo.s_min_reading must be 'min_cluster_size' or 'released_code', "
        f"got {p.s_min_reading!r}"
    )


def pseudo_label_kwargs(p: PseudoConfig, seed: int, *, cameras_known: bool = True) -> dict:
    """The keyword arguments of :func:`~adaptreid.pseudo.labels.make_pseudo_labels` that
    ``pseudo.*`` describes. Without camera ids, camera normalisation and the >= 2-camera rule
    are off (the caller warns)."""
    min_cluster_size, hdb_min_samples = hdbscan_sizes(p)
    return dict(
        camera_norm=p.camera_norm and cameras_known,
        l2_after=p.l2_after,
        method=p.method,
        distance=p.distance,
        eps=p.eps,
        min_samples=hdb_min_samples if p.method == "hdbscan" else p.min_samples,
        k=p.kmeans_k or None,
        min_cluster_size=min_cluster_size,
        k1=p.k1,
        k2=p.k2,
        select=p.select,
        # a selection rule is switched off by making it keep everything
        min_size=p.min_size if p.enforce_size else 1,
        min_cameras=p.min_cameras if (p.enforce_cameras and cameras_known) else 1,
        seed=seed,
    )


#: make_pseudo_labels arguments that the eps sweep takes too
SWEEP_KEYS = (
    "camera_norm",
    "l2_after",
    "distance",
    "min_samples",
    "k1",
    "k2",
    "select",
    "min_size",
    "min_cameras",
)


class StepFeatures:
    """The target training features of one step (dataset order) and what derives from them.

    Args:
        feats: the loop's :class:`~adaptreid.engine.extract.Features` of ``target.train``.
        pseudo: the ``pseudo.*`` config.
        seed: the run's seed (k-means).
        step: the step these features start (for logs).
        true_pids: target identities when known: label quality for the records only,
            never used to make labels.
    """

    def __init__(
        self,
        feats: Features,
        pseudo: PseudoConfig,
        *,
        seed: int = 0,
        step: int = 0,
        true_pids: np.ndarray | None = None,
    ) -> None:
        self.features = feats.feats
        self.camids = np.asarray(feats.camids)
        self.pseudo = pseudo
        self.seed = int(seed)
        self.step = int(step)
        self.true_pids = true_pids
        self.cameras_known = bool(len(self.camids)) and bool((self.camids >= 0).all())
        self.seconds: dict[str, float] = {"distance": 0.0, "cluster": 0.0}
        self._prepared: torch.Tensor | None = None
        self._jaccard: sp.csr_matrix | None = None
        if not self.cameras_known and (pseudo.camera_norm or pseudo.min_cameras > 1):
            log.warning(
                "the target's camera ids are unknown: camera normalisation (pseudo.camera_norm) "
                "and the >= %d-camera rule of cluster selection are off",
                pseudo.min_cameras,
            )

    def __len__(self) -> int:
        return len(self.features)

    def kwargs(self, **overrides: Any) -> dict:
        """:func:`pseudo_label_kwargs` of this step (plus ``overrides``)."""
        kw = pseudo_label_kwargs(self.pseudo, self.seed, cameras_known=self.cameras_known)
        kw.update(overrides)
        return kw

    def prepared(self) -> torch.Tensor:
        """The rows that are clustered (eq. 4 then L2, as ``pseudo.*`` says); computed once."""
        if self._prepared is None:
            kw = self.kwargs()
            x = prepare_features(self.features, self.camids, kw["camera_norm"], kw["l2_after"])
            self._prepared = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        return self._prepared

    def jaccard(self, *, distributed: bool = False) -> sp.csr_matrix:
        """The k-reciprocal Jaccard distance (k1, k2 of ``pseudo.*``) of :meth:`prepared`;
        computed once per step and shared by auto-eps, clustering and ranking.
        ``distributed=True`` shards its exact top-k across the torch.distributed ranks: a
        collective, which the loop calls on every rank before the rank-0-only labelling."""
        if self._jaccard is None:
            t0 = time.perf_counter()
            self._jaccard = jaccard_distance(
                self.prepared(), k1=self.pseudo.k1, k2=self.pseudo.k2, distributed=distributed
            )
            self.seconds["distance"] += time.perf_counter() - t0
        return self._jaccard

    def cluster(self, **overrides: Any) -> PseudoLabels:
        """The pseudo-labels ``pseudo.*`` describes: eps by the label-free sweep when
        ``pseudo.auto_eps`` (DBSCAN), the clustering, cluster selection; with label quality
        when the target's identities are known (analysis only)."""
        kw = self.kwargs(**overrides)
        jac = self.jaccard() if kw["distance"] == "jaccard" and kw["method"] != "kmeans" else None
        t0 = time.perf_counter()
        reason = None
        if self.pseudo.auto_eps and kw["method"] == "dbscan":
            sweep = {k: kw[k] for k in SWEEP_KEYS}
            kw["eps"], _, reason = auto_eps(self.features, self.camids, jaccard=jac, **sweep)
            log.info("step %d auto eps: %s", self.step, reason.split(";")[0])
        result = make_pseudo_labels(
            self.features, self.camids, true_pids=self.true_pids, jaccard=jac, **kw
        )
        self.seconds["cluster"] += time.perf_counter() - t0
        if reason:
            result.params["eps_reason"] = reason
        return result
