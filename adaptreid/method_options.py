"""The options of the adaptation methods (the ``method:`` section of a config), below
:mod:`adaptreid.config` so that a :class:`~adaptreid.config.Config` builds without importing a
method (or torch).

:class:`MethodOptions` is the base of every method's options. The built-in methods' options
are here, each registered in :data:`adaptreid.registry.METHOD_OPTIONS` under its method's
name; the methods themselves (``adaptreid/methods/``) say which they use (``Options = ...``).
A new method may declare its options in its own file: :func:`adaptreid.engine.method.
register_method` registers them with the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .registry import METHOD_OPTIONS

__all__ = ["ClusterContrastOptions", "MSPLROptions", "MethodOptions", "PASTOptions"]


@dataclass
class MethodOptions:
    """Base of every adaptation method's options (the ``method:`` section of a config).

    A method declares its own subclass (:class:`MSPLROptions`, ...): the keys of the section
    are checked against it, with "Did you mean" hints."""

    name: str = ""


@dataclass
class MSPLROptions(MethodOptions):
    """MSPLR's own options (section 3.6.2); its other settings are ``pseudo.*`` / ``loss.*``."""

    name: str = "msplr"
    freeze: Literal["before_schedule", "inside_schedule"] = "before_schedule"
    """before_schedule (the paper's reading: frozen epochs, then the full eq. 6 schedule) |
    inside_schedule (the frozen epochs are the first of the schedule)."""
    rtl_eta: int = 20
    """With ``loss.rtl_weight > 0``: PAST's eta (RTL positives from ranks 1..eta)."""
    memory: Literal["none", "cluster", "camera_proxy"] = "none"
    """A memory contrastive term added to eq. 5 on the same pseudo-labels and batches,
    ``L = L_tri + L_ID + 0.005 L_c + w L_memory`` (issue 26): none (MSPLR as published) |
    cluster (cluster contrast's ClusterNCE, one entry per cluster) | camera_proxy (CAP's
    intra- and inter-camera losses, one entry per (cluster, camera) pair; Wang et al., AAAI
    2021). Same meanings as cluster contrast's ``method.memory`` and the options below."""
    memory_weight: float = 1.0
    """w, the memory term's weight (read only with a memory)."""
    temperature: float = 0.05
    """tau of the memory loss (CAP's 0.07 in the memory presets)."""
    momentum: float = 0.2
    """mu of the memory update m <- mu m + (1 - mu) f (CAP's 0.2)."""
    inter_weight: float = 0.5
    """camera_proxy: lambda of ``L_intra + lambda L_inter`` (CAP's 0.5)."""
    hard_negatives: int = 50
    """camera_proxy: K, the hard negative proxies per image in ``L_inter`` (CAP's 50)."""


@dataclass
class PASTOptions(MethodOptions):
    """PAST's own options; ``pseudo.k1`` / ``k2`` are eq. 1's encoding, ``pseudo.s_min``
    HDBSCAN's S_min (10), ``loss.margin`` the m of eq. 3-4 (0.3)."""

    name: str = "past"
    conservative_epochs: int = 40
    """Epochs (passes of the P x K sampler over T_U) of each conservative stage. Not given in
    the paper; 40 is the authors' released training script."""
    promoting_epochs: int = 40
    use_ctl: bool = True
    """Clustering-based triplet loss, eq. 3."""
    use_rtl: bool = True
    """Ranking-based triplet loss, eq. 4."""
    use_promoting: bool = True
    """Promoting stage (eq. 6-7); off = the "C" rows of Table 1."""
    eta: int = 20
    """RTL: positives from ranks 1..eta, negatives from eta+1..2 eta (appendix, Table 4)."""
    lambda_ctl: float = 0.5
    """lambda of eq. 5, L_C = L_RTL + lambda L_CTL (section 3.4)."""
    triplet_reading: Literal["per_part_cosine", "concatenated_euclidean"] = "concatenated_euclidean"
    """The feature and distance of CTL and RTL (eq. 3-4 write ``||f(x_a) - f(x_p)||_2`` and
    leave the feature unnamed). ``per_part_cosine``: the authors' released code
    (``--dist_type cosine``, its default), each part embedding L2-normalised, the cosine
    distance, CTL summed and RTL averaged over the parts; every PAST preset uses it.
    ``concatenated_euclidean``: the concatenated, unnormalised part embeddings with the
    euclidean distance (the reading of runs made before this option, hence the default here,
    so that their saved configs keep their meaning)."""
    lr_trunk_conservative: float = 1.0e-4
    lr_embedding_conservative: float = 2.0e-4
    lr_classifier_promoting: float = 1.0e-3
    lr_rest_promoting: float = 5.0e-5
    lr_decay_after: int = 3
    """All learning rates x ``lr_decay`` for iterations > this (0: never)."""
    lr_decay: float = 0.1
    classifier_init: Literal["normalized", "raw", "random"] = "normalized"
    """Eq. 7: cluster means of the per-part L2-normalised features (normalized), of the raw
    features (raw), or a random classifier (random; an ablation)."""


@dataclass
class ClusterContrastOptions(MethodOptions):
    """Cluster contrast's ClusterNCE loss and memory update (Dai et al., ACCV 2022)."""

    name: str = "cluster_contrast"
    temperature: float = 0.05
    """tau of the ClusterNCE loss."""
    momentum: float = 0.1
    """mu of the memory update m <- mu m + (1 - mu) f (the authors' 0.1)."""
    memory: Literal["cluster", "camera_proxy"] = "cluster"
    """One memory entry per cluster (cluster contrast), or per (cluster, camera) pair with
    CAP's intra- and inter-camera losses (Wang et al., AAAI 2021;
    :mod:`adaptreid.losses.camera_proxy`)."""
    inter_weight: float = 0.5
    """camera_proxy: lambda of ``L_intra + lambda L_inter`` (CAP's 0.5)."""
    hard_negatives: int = 50
    """camera_proxy: K, the hard negative proxies per image in ``L_inter`` (CAP's 50)."""


for _options in (MSPLROptions, PASTOptions, ClusterContrastOptions):
    METHOD_OPTIONS.register(_options.name)(_options)
