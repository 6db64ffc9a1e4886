"""How far an mAP, or the difference of two models' mAPs, moves with the test identities drawn.

A dev half of a small target holds few identities (PKU-Reid's: 37), and a step's mAP moves by
a point or two between neighbouring steps. Before reading "step 5 is 1.3 mAP below step 3" as a
fact, resample the test *identities* (a cluster bootstrap: a query's AP depends on the other
images of its identity, so queries are not independent draws) and see how the mAP, or the
paired difference of two models evaluated on the same queries, spreads.

* :func:`map_interval`: the mAP over the queries and its percentile bootstrap interval.
* :func:`map_difference_interval`: ``mAP(a) - mAP(b)`` over the queries valid for both, with
  the interval of the paired bootstrap (the same identities drawn for both models).

Pure functions on arrays (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993:
percentile intervals, ch. 13; resampling clusters of correlated observations, ch. 8.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MapInterval", "ap_from_record", "map_difference_interval", "map_interval"]


@dataclass(frozen=True)
class MapInterval:
    """An mAP (or a difference of two) with its bootstrap interval, all fractions in [0, 1]
    (a difference in [-1, 1]).

    Attributes:
        value: the statistic on the queries as given.
        low, high: the percentile interval's ends at ``level``.
        level: the interval's coverage, e.g. 0.9.
        num_queries: queries that entered (valid: AP not NaN; for a difference, valid in both).
        num_identities: distinct identities among them, the units resampled.
    """

    value: float
    low: float
    high: float
    level: float
    num_queries: int
    num_identities: int

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies within the interval (ends included)."""
        return self.low <= x <= self.high


def ap_from_record(values) -> np.ndarray:
    """The per-query APs of a ``per_query`` record (a run's ``metrics.jsonl``, an ``adaptreid
    evaluate --out`` file), where a query without a true match is stored as null, as the float
    array the functions here take (NaN for those queries)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _check(ap: np.ndarray, name: str, n: int | None) -> np.ndarray:
    a = np.asarray(ap, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of per-query APs, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries, expected {n} (one per query)")
    ok = a[~np.isnan(a)]
    if ((ok < 0) | (ok > 1)).any():
        raise ValueError(f"{name} must hold APs in [0, 1] (NaN for a skipped query)")
    return a


def _interval(
    values: np.ndarray, groups: np.ndarray, n_boot: int, level: float, seed: int
) -> MapInterval:
    """Mean of ``values`` and the percentile interval of its cluster bootstrap over ``groups``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _, inverse = np.unique(groups, return_inverse=True)
    sums, sizes = _group_sums(values, inverse)
    counts = np.random.default_rng(seed).multinomial(
        len(sums), np.full(len(sums), 1.0 / len(sums)), size=n_boot
    )
    means = resampled_means(counts, sums, sizes)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return MapInterval(
        value=float(values.mean()),
        low=float(low),
        high=float(high),
        level=level,
        num_queries=len(values),
        num_identities=len(sums),
    )


def _group_sums(values: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per identity: the sum of its queries' values and its number of queries."""
    sums = np.bincount(inverse, weights=values)
    sizes = np.bincount(inverse).astype(np.float64)
    return sums, sizes


def resampled_means(counts: np.ndarray, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The mean over the queries of each resample: a resample draws identity ``g``
    ``counts[b, g]`` times, bringing all of its queries each time, so its mean is
    ``sum_g counts[b, g] * sums[g] / sum_g counts[b, g] * sizes[g]``."""
    return (counts @ sums) / (counts @ sizes)


def map_interval(
    ap: np.ndarray,
    pids: np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> MapInterval:
    """The mAP of per-query APs ``ap`` (:attr:`RankResult.ap <adaptreid.evaluation.RankResult>`,
    NaN for skipped queries) and its interval when the identities ``pids`` (one per query) are
    resampled with replacement ``n_boot`` times (seeded: the same inputs give the same
    interval)."""
    a = _check(ap, "ap", None)
    p = np.asarray(pids)
    if p.shape != a.shape:
        raise ValueError(f"pids has shape {p.shape}, expected {a.shape} (one per query)")
    ok = ~np.isnan(a)
    if not ok.any():
        raise ValueError("no query has an AP (all NaN): nothing to average")
    return _interval(a[ok], p[ok], n_boot, level, seed)


def map_difference_interval(
    ap_a: np.ndarray,
    ap_b: np.ndarray,
    pids: np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> MapInterval:
    """``mAP(a) - mAP(b)`` over the queries valid for both models (the same query list, in
    the same order) and its paired cluster-bootstrap interval: each resample draws identities
    with replacement and takes both models' APs of the same queries. When the interval holds
    0, the test identities do not tell the two models apart at that level."""
    a = _check(ap_a, "ap_a", None)
    b = _check(ap_b, "ap_b", len(a))
    p = np.asarray(pids)
    if p.shape != a.shape:
        raise ValueError(f"pids has shape {p.shape}, expected {a.shape} (one per query)")
    ok = ~np.isnan(a) & ~np.isnan(b)
    if not ok.any():
        raise ValueError("no query has an AP for both models: nothing to compare")
    return _interval(a[ok] - b[ok], p[ok], n_boot, level, seed)
