"""Pseudo-label settings as one typed object, built once from the config and passed whole down
to clustering (instead of loose keyword arguments, each layer with its own defaults).

* :class:`ClusterSettings`: what :func:`adaptreid.pseudo.clustering.cluster` needs (the
  algorithm and its parameters, the implementation choices);
* :class:`NeighborSettings`: how the k nearest neighbours of the k-reciprocal encoding are
  found (exact blocked products, or inverted lists searched with exact distances);
* :class:`PseudoSettings`: the whole MSPLR pipeline of
  :func:`adaptreid.pseudo.labels.make_pseudo_labels` (eq. 4 normalisation, the distance,
  clustering, cluster selection of section 3.4), holding a :class:`ClusterSettings` and a
  :class:`NeighborSettings`.

:meth:`PseudoSettings.from_config` reads ``pseudo.*`` (a
:class:`~adaptreid.config.PseudoConfig`) once; :meth:`PseudoSettings.replace` gives a changed
copy (``eps`` chosen by the label-free sweep, a test's option), routing a clustering key to
the nested :class:`ClusterSettings`. Unknown keys are a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config_files import _check_choice
from ..errors import ConfigError

__all__ = [
    "APPROX_MIN_N",
    "NEIGHBOR_MODES",
    "RELEASED_CODE_MIN_CLUSTER_SIZE",
    "ClusterSettings",
    "NeighborSettings",
    "PseudoSettings",
    "hdbscan_sizes",
]

Method = Literal["dbscan", "kmeans", "hdbscan"]
Metric = Literal["euclidean", "cosine"]
HdbscanImpl = Literal["sparse", "dense"]
KMeansImpl = Literal["torch", "sklearn"]
NeighborMode = Literal["exact", "approximate", "auto"]
NEIGHBOR_MODES: tuple[str, ...] = ("exact", "approximate", "auto")

#: HDBSCAN's min_cluster_size in the authors' released PAST code (the ``hdbscan`` default).
RELEASED_CODE_MIN_CLUSTER_SIZE = 5

#: Rows (and columns) of one distance block: 2048 x 2048 float32 = 16 MB.
DEFAULT_BLOCK_SIZE = 2048
#: Largest N for which ``hdbscan_impl="dense"`` (the comparison path) densifies a sparse
#: distance: scikit-learn's HDBSCAN works on a float64 N x N matrix, 8 N^2 bytes (1.35 GB at
#: N = 13k, 3.2 GB at N = 20k). The default sparse path has no limit.
HDBSCAN_DENSE_LIMIT = 20_000
#: Default cap on stored pairs of a radius graph (~1.6 GB): beyond it eps is almost surely far
#: too large (every image a neighbour of thousands), and a clear error beats running out of
#: memory.
DEFAULT_MAX_PAIRS = 100_000_000


#: ``neighbors="auto"`` switches to the approximate search from this many images up (and
#: when faiss is installed). Measured on 2048-d synthetic features, 2 cores, AMD Zen 3
#: (BENCHMARKS.md, "Approximate neighbours"): at 200,000 the whole pseudo-label step takes
#: 168 s instead of 992 s with DBSCAN labels equal to the exact path's (ARI 0.99999). At
#: 50,000 and 20,000 only a first version was measured (each row in one list, no weak-row
#: search: 30 s against 71 s, 11 s against 16 s), where the exact step takes a minute or
#: less, so the exact path keeps every target below 200,000.
APPROX_MIN_N = 200_000
#: IVF lists per sqrt(N) (faiss's rule of thumb is 4 to 16 sqrt(N)).
NLIST_PER_SQRT_N = 4
#: Fewest images per IVF list on average (caps nlist at small N).
MIN_PER_LIST = 8
#: Inverted lists probed per query by default (see :class:`NeighborSettings`).
DEFAULT_NPROBE = 4


def _positive(owner: str, name: str, value: Any, *, zero: bool = False) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < (0 if zero else 1):
        what = "a non-negative integer (0: the default rule)" if zero else "a positive integer"
        raise ConfigError(f"{owner}.{name} must be {what}, got {value!r}")


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(
            f"{type(obj).__name__} has no setting {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(obj, **changes) if changes else obj


@dataclass(frozen=True)
class ClusterSettings:
    """The arguments of :func:`adaptreid.pseudo.clustering.cluster` (see it for each)."""

    method: Method = "dbscan"
    """dbscan (MSPLR section 3.3.2) | kmeans (section 3.3.1, eq. 1) | hdbscan (PAST 2.2)."""
    eps: float = 0.42
    """DBSCAN radius."""
    min_samples: int | None = None
    """Core-point size, the point included; None: 4 (DBSCAN), min_cluster_size (HDBSCAN)."""
    k: int | None = None
    """k-means clusters; None: ``max(1, N // 15)`` (eq. 1)."""
    min_cluster_size: int = 10
    """HDBSCAN's smallest cluster (PAST's S_min)."""
    seed: int = 0
    """k-means random state."""
    metric: Metric = "euclidean"
    """euclidean | cosine: the distance between features (DBSCAN / HDBSCAN on features)."""
    n_init: int = 1
    """k-means restarts."""
    fill: float = 1.0
    """HDBSCAN: the distance of pairs a sparse distance does not store (1 for Jaccard)."""
    block_size: int = DEFAULT_BLOCK_SIZE
    max_pairs: int = DEFAULT_MAX_PAIRS
    hdbscan_dense_limit: int = HDBSCAN_DENSE_LIMIT
    hdbscan_impl: HdbscanImpl = "sparse"
    kmeans_impl: KMeansImpl = "torch"

    def replace(self, **changes: Any) -> ClusterSettings:
        return _replace(self, changes)


@dataclass(frozen=True)
class NeighborSettings:
    """How the k nearest neighbours behind the k-reciprocal encoding (Zhong et al., CVPR 2017,
    section 3: N(p, k), eq. 4-6) are found: :mod:`adaptreid.pseudo.ann`.

    * ``exact``: blocked matrix products over all pairs (:mod:`adaptreid.pseudo.topk`),
      O(N^2 d) time: 480 s of a 200,000-image step on 2 cores, 3 hours at 1,000,000;
    * ``approximate``: inverted lists (``nlist`` lists from a faiss k-means of a sample, in a
      space without the few leading principal components that stand apart, e.g. camera
      offsets); the rows of each list are searched against the rows of the ``nprobe`` lists
      nearest to it by dense products, with the exact path's distance formula; the row
      maxima of eq. 7's normalisation from a set of far points. Needs the optional faiss
      (``pip install 'adaptreid[faiss]'``);
    * ``auto``: ``approximate`` from ``auto_min_n`` images up when faiss is installed, else
      ``exact`` (with a warning above ``auto_min_n``).
    """

    mode: NeighborMode = "exact"
    """exact | approximate | auto (default exact: the approximate search's recall depends on
    the features, BENCHMARKS.md "Approximate neighbours")."""
    auto_min_n: int = APPROX_MIN_N
    """``auto`` searches approximately from this many images up."""
    nlist: int = 0
    """IVF lists; 0: ``round(4 sqrt(N))`` (capped at N / 8)."""
    nprobe: int = 0
    """Lists each list's rows are searched against (its own included); 0:
    :data:`DEFAULT_NPROBE`. ``nprobe >= nlist`` searches everything: the exact neighbours,
    by a slower road."""
    spill: int = 2
    """Lists each image belongs to: its nearest ``spill`` (as a candidate and as a query),
    so that an image near the border of two lists finds the people in both; 1: its nearest
    only (half the products; at N = 200,000 3% of the images then found almost none of
    their identity's and were DBSCAN outliers, BENCHMARKS.md "Approximate neighbours")."""
    drop_components: int = -1
    """Leading principal components projected out of the space the lists are built in;
    -1: those before an eigenvalue gap (:func:`adaptreid.pseudo.ann.list_space`)."""
    train_per_list: int = 32
    """k-means training sample: this many images per list (at most N and
    :data:`adaptreid.pseudo.ann.MAX_TRAIN`)."""
    niter: int = 10
    """k-means iterations of the IVF training."""
    seed: int = 0
    """k-means sample and initialisation."""

    def __post_init__(self) -> None:
        _check_choice("pseudo.neighbors", NEIGHBOR_MODES, self.mode)
        drop = self.drop_components
        if not isinstance(drop, int) or isinstance(drop, bool) or drop < -1:
            raise ConfigError(
                "NeighborSettings.drop_components must be an integer >= -1 (-1: by the "
                f"eigenvalue gap), got {self.drop_components!r}"
            )
        for name in ("nlist", "nprobe"):
            _positive("NeighborSettings", name, getattr(self, name), zero=True)
        for name in ("auto_min_n", "train_per_list", "niter", "spill"):
            _positive("NeighborSettings", name, getattr(self, name))

    def approximate(self, n: int) -> bool:
        """Whether N = ``n`` images are searched approximately (``auto``: from
        ``auto_min_n`` up; whether faiss is installed is :mod:`adaptreid.pseudo.ann`'s
        business)."""
        return self.mode == "approximate" or (self.mode == "auto" and n >= self.auto_min_n)

    def lists(self, n: int) -> int:
        """The number of IVF lists for ``n`` images."""
        if self.nlist:
            return max(1, min(self.nlist, n))
        return max(1, min(round(NLIST_PER_SQRT_N * n**0.5), n // MIN_PER_LIST))

    def probes(self, nlist: int) -> int:
        """Lists searched per image (at most ``nlist``)."""
        return min(self.nprobe or DEFAULT_NPROBE, nlist)

    def replace(self, **changes: Any) -> NeighborSettings:
        return _replace(self, changes)


@dataclass(frozen=True)
class PseudoSettings:
    """Everything that decides the pseudo-labels of one step, resolved (MSPLR sections
    3.3-3.5, PAST eq. 1-2). A selection rule is off when its threshold is 1."""

    camera_norm: bool = True
    """MSPLR eq. 4 per camera before clustering."""
    l2_after: bool = True
    """Rows L2-normalised again after eq. 4 (plain L2 without camera normalisation)."""
    distance: str = "euclidean"
    """euclidean | cosine | jaccard (k-reciprocal, on the prepared rows)."""
    k1: int = 20
    k2: int = 6
    select: bool = True
    """Cluster selection (section 3.4)."""
    min_size: int = 4
    min_cameras: int = 2
    auto_eps: bool = False
    """DBSCAN's eps chosen at every step by the label-free sweep."""
    max_portion: float = 1.0
    """The label-free sweep considers only the eps that keep at most this portion of the
    images (set per step from ``pseudo.max_kept_growth``; 1: no cap)."""
    min_portion: float = 0.0
    """... and at least this portion (set per step from ``pseudo.kept_never_shrinks``: the
    last labels' portion; 0: no floor)."""
    giant_factor: float = 5.0
    """The label-free sweep leaves out the eps whose largest cluster is more than this many
    times the median one (``adaptreid.pseudo.labels.GIANT_CLUSTER_FACTOR``)."""
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    neighbors: NeighborSettings = field(default_factory=NeighborSettings)
    """How the Jaccard distance's k nearest neighbours are found (``pseudo.neighbors``)."""

    @classmethod
    def from_config(cls, p: Any, seed: int = 0, *, cameras_known: bool = True) -> PseudoSettings:
        """From ``pseudo.*`` (a :class:`~adaptreid.config.PseudoConfig`). Without camera ids,
        camera normalisation and the >= 2-camera rule are off (the caller warns)."""
        min_cluster_size, hdb_min_samples = hdbscan_sizes(p)
        return cls(
            camera_norm=p.camera_norm and cameras_known,
            l2_after=p.l2_after,
            distance=p.distance,
            k1=p.k1,
            k2=p.k2,
            select=p.select,
            # a selection rule is switched off by making it keep everything
            min_size=p.min_size if p.enforce_size else 1,
            min_cameras=p.min_cameras if (p.enforce_cameras and cameras_known) else 1,
            auto_eps=p.auto_eps,
            giant_factor=p.giant_factor,
            cluster=ClusterSettings(
                method=p.method,
                eps=p.eps,
                min_samples=hdb_min_samples if p.method == "hdbscan" else p.min_samples,
                k=p.kmeans_k or None,
                min_cluster_size=min_cluster_size,
                seed=seed,
            ),
            neighbors=NeighborSettings(mode=p.neighbors, nprobe=p.neighbors_nprobe, seed=seed),
        )

    def replace(self, **changes: Any) -> PseudoSettings:
        """A copy with ``changes``; keys of :class:`ClusterSettings` go to ``cluster``."""
        inner = {f.name for f in dataclasses.fields(ClusterSettings)}
        nested = {k: changes.pop(k) for k in list(changes) if k in inner}
        out = _replace(self, changes)
        if nested:
            out = dataclasses.replace(out, cluster=out.cluster.replace(**nested))
        return out


def hdbscan_sizes(p: Any) -> tuple[int, int | None]:
    """``(min_cluster_size, min_samples)`` for scikit-learn's HDBSCAN from PAST's S_min
    (section 3.4) read as ``p.s_min_reading`` says (see :class:`~adaptreid.config.PseudoConfig`).

    * ``min_cluster_size``: S_min is the smallest cluster; min_samples is left to default
      to the same number. Both libraries default it to min_cluster_size, but they do not
      agree on what it counts: scikit-learn counts the point itself, the ``hdbscan`` package
      does not, so the same call there would mean min_samples S_min + 1 here (core distance
      to the S_min-th other point, not the (S_min - 1)-th);
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
