"""One step's target features and the pseudo-labels the config asks for, each computed once.

:class:`StepFeatures` is what a method's ``pseudo_labels`` receives. It holds the features of
every target training image (extracted by the loop with the current model) and computes on
demand, at most once per step: the rows that are clustered (camera normalisation, eq. 4 of
MSPLR, then L2), their k-reciprocal Jaccard distance (used by auto-eps, the clustering and
PAST's ranking alike), PAST's ranking table (:meth:`StepFeatures.ranked`, from the Jaccard
pass's own neighbour table), and :meth:`StepFeatures.cluster`, the config-driven pipeline
auto-eps -> DBSCAN / HDBSCAN / k-means -> cluster selection of ``adaptreid.pseudo``.
``seconds`` records where the time went (``distance``, ``cluster``) for the step's record.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch

from ..config import PseudoConfig
from ..pseudo.ann import resolve_neighbors
from ..pseudo.kreciprocal import jaccard_with_neighbors
from ..pseudo.labels import (
    PseudoLabels,
    auto_eps,
    make_pseudo_labels,
    prepare_features,
    recommend_eps,
    sweep_eps,
)
from ..pseudo.ranking import ranked_neighbors
from ..pseudo.settings import PseudoSettings
from .extract import Features

log = logging.getLogger("adaptreid")

__all__ = ["StepFeatures"]


class StepFeatures:
    """The target training features of one step (dataset order) and what derives from them.

    Args:
        feats: the loop's :class:`~adaptreid.engine.extract.Features` of ``target.train``.
        pseudo: the ``pseudo.*`` config.
        seed: the run's seed (k-means).
        step: the step these features start (for logs).
        true_pids: target identities when known: label quality for the records only,
            never used to make labels.
        max_portion: the most of the images the label-free eps may keep (the loop's
            ``pseudo.max_kept_growth`` cap; 1: none).
        min_portion: the fewest it may keep (``pseudo.kept_never_shrinks``; 0: no floor).
        ranking: the ranks of PAST's ranking table the method will ask :meth:`ranked` for
            (``2 eta``; 0: none): the Jaccard pass then keeps ``ranking + 1`` euclidean
            neighbours per image, and the table needs no search of its own.
    """

    def __init__(
        self,
        feats: Features,
        pseudo: PseudoConfig,
        *,
        seed: int = 0,
        step: int = 0,
        true_pids: np.ndarray | None = None,
        max_portion: float = 1.0,
        min_portion: float = 0.0,
        ranking: int = 0,
    ) -> None:
        self.features = feats.feats
        self.camids = np.asarray(feats.camids)
        self.pseudo = pseudo
        self.seed = int(seed)
        self.step = int(step)
        self.true_pids = true_pids
        self.cameras_known = bool(len(self.camids)) and bool((self.camids >= 0).all())
        self.settings = PseudoSettings.from_config(
            pseudo, self.seed, cameras_known=self.cameras_known
        ).replace(max_portion=max_portion, min_portion=min_portion)
        """The step's :class:`~adaptreid.pseudo.settings.PseudoSettings`, built once."""
        self.seconds: dict[str, float] = {"distance": 0.0, "cluster": 0.0}
        self._prepared: torch.Tensor | None = None
        self.ranking = int(ranking)
        self._jaccard: sp.csr_matrix | None = None
        self._table: np.ndarray | None = None
        self._neighbor_mode: str | None = None
        if not self.cameras_known and (pseudo.camera_norm or pseudo.min_cameras > 1):
            log.warning(
                "the target's camera ids are unknown: camera normalisation (pseudo.camera_norm) "
                "and the >= %d-camera rule of cluster selection are off",
                pseudo.min_cameras,
            )

    def __len__(self) -> int:
        return len(self.features)

    def prepared(self) -> torch.Tensor:
        """The rows that are clustered (eq. 4 then L2, as ``pseudo.*`` says); computed once."""
        if self._prepared is None:
            st = self.settings
            x = prepare_features(self.features, self.camids, st.camera_norm, st.l2_after)
            self._prepared = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        return self._prepared

    def neighbor_mode(self) -> str:
        """``"exact"`` or ``"approximate"``: how this step's Jaccard distance finds its
        neighbours (``pseudo.neighbors`` resolved for N; ``auto`` without faiss warns once
        and is exact)."""
        if self._neighbor_mode is None:
            _, self._neighbor_mode = resolve_neighbors(self.settings.neighbors, len(self))
        return self._neighbor_mode

    def shards_jaccard(self) -> bool:
        """Whether torch.distributed ranks share this step's Jaccard pass (the exact
        neighbour search is sharded; the approximate one is computed by rank 0 alone)."""
        return self.neighbor_mode() == "exact"

    def jaccard(self, *, distributed: bool = False) -> sp.csr_matrix:
        """The k-reciprocal Jaccard distance (k1, k2 of ``pseudo.*``) of :meth:`prepared`;
        computed once per step and shared by auto-eps, clustering and ranking.
        ``distributed=True`` shards its exact top-k across the torch.distributed ranks: a
        collective, which the loop calls on every rank before the rank-0-only labelling.
        With ``ranking`` set, the same neighbour search also keeps the table :meth:`ranked`
        reads."""
        if self._jaccard is None:
            t0 = time.perf_counter()
            mode = self.neighbor_mode()
            self._jaccard, self._table = jaccard_with_neighbors(
                self.prepared(),
                k1=self.pseudo.k1,
                k2=self.pseudo.k2,
                num_neighbors=self.ranking + 1 if self.ranking else 0,
                distributed=distributed,
                neighbors=self.settings.neighbors.replace(mode=mode),
            )
            self.seconds["distance"] += time.perf_counter() - t0
        return self._jaccard

    def ranked(self, num: int) -> np.ndarray:
        """PAST's ranking table (eq. 2), ``num`` ranks, from :meth:`jaccard`
        (:func:`~adaptreid.pseudo.ranking.ranked_neighbors`); rows with fewer stored
        neighbours are filled from the Jaccard pass's euclidean neighbour table when it is
        wide enough (``ranking >= num``), else by a search among :meth:`prepared`."""
        jac = self.jaccard()
        table = self._table if self._table is not None and self._table.shape[1] > num else None
        return ranked_neighbors(jac, num, features=self.prepared(), neighbors=table)

    def cluster(self) -> PseudoLabels:
        """The pseudo-labels ``pseudo.*`` describes (:attr:`settings`): eps
        by the label-free sweep when ``pseudo.auto_eps`` (DBSCAN), the clustering, cluster
        selection; with label quality when the target's identities are known (analysis
        only). The features are prepared once per step (:meth:`prepared`)."""
        st = self.settings
        jac = self._jaccard_for(st)
        t0 = time.perf_counter()
        reason = None
        if st.auto_eps and st.cluster.method == "dbscan":
            eps, _, reason = auto_eps(
                self.features, self.camids, st, jaccard=jac, prepared=self.prepared()
            )
            st = st.replace(eps=eps)
            log.info("step %d auto eps: %s", self.step, reason.split(";")[0])
        result = make_pseudo_labels(
            self.features,
            self.camids,
            st,
            true_pids=self.true_pids,
            jaccard=jac,
            prepared=self.prepared(),
        )
        self.seconds["cluster"] += time.perf_counter() - t0
        if reason:
            result.params["eps_reason"] = reason
        if jac is not None:
            result.params["neighbors"] = self.neighbor_mode()
        return result

    def eps_sweep(self, eps_values=None) -> tuple[list[dict], float, str]:
        """DBSCAN at each of ``eps_values`` (None: the candidates ``pseudo.auto_eps`` tries)
        on this step's prepared rows: ``(sweep rows, recommended eps, reason)``; what
        ``adaptreid cluster`` prints."""
        st = self.settings
        jac, x = self._jaccard_for(st), self.prepared()
        if eps_values is None:
            eps, rows, reason = auto_eps(
                self.features, self.camids, st, true_pids=self.true_pids, jaccard=jac, prepared=x
            )
            return rows, eps, reason
        rows = sweep_eps(
            self.features,
            self.camids,
            eps_values,
            st,
            true_pids=self.true_pids,
            jaccard=jac,
            prepared=x,
        )
        return (rows, *recommend_eps(rows, giant_factor=st.giant_factor))

    def _jaccard_for(self, st: PseudoSettings) -> sp.csr_matrix | None:
        """The step's Jaccard distance when ``st`` clusters on it (k-means never does)."""
        if st.distance == "jaccard" and st.cluster.method != "kmeans":
            return self.jaccard()
        return None
