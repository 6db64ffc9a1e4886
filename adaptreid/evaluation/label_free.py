"""Label-free scores of an adapted model on the unlabelled target: for model selection.

A user adapting a model to their own cameras has no target labels, so "the step with the best
target mAP" (MSPLR Figure 2) is not available to them. These scores use only what such a
user has: the model's features of the target training images, their camera ids, and the
pseudo-labels of the loop. Each is computed for the model of step ``s`` from the features
that start step ``s + 1`` (the loop extracts them anyway) and the two pseudo-label sets
around it. Pure functions on arrays.

* :func:`label_agreement`: how well the model's own clustering reproduces the pseudo-labels
  it was trained on (adjusted Rand index over the images kept by both rounds, times the
  portion of images both rounds keep). A model that has learnt a consistent identity
  structure from its labels re-finds it; a model that learnt label noise does not.
* :func:`soft_neighborhood_density`: SND of Saito et al., "Tune it the right way:
  unsupervised validation of domain adaptation via soft neighborhood density", ICCV 2021:
  the mean entropy of each sample's softmax over its similarities to the others.
* :func:`holdout_map`: retrieval mAP on a held-back slice of the first pseudo-labels: a few
  clusters of step 1 that no step trains on (``adapt.holdout``), their step-1 labels taken as
  identities. Unlike ``agreement`` it does not grow with training by construction: a model
  that merges identities or drifts ranks the held-back clusters worse.
* :func:`cross_camera_neighbors`: the fraction of each image's nearest neighbours that come
  from other cameras: camera bias (neighbours from the same camera) is the typical failure of
  a source model on a new camera network.

``adapt.select`` (:mod:`adaptreid.engine.loop`) names which one chooses ``best.pt``; every
step's record carries all of them, so that a report can show how each would have chosen.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "choose_holdout",
    "cross_camera_neighbors",
    "holdout_map",
    "label_agreement",
    "label_free_scores",
    "soft_neighborhood_density",
]


def label_agreement(trained_on, relabelled) -> dict[str, float]:
    """Agreement of two pseudo-label sets of the same images (-1 = left out).

    Returns ``ari`` (adjusted Rand index over the images labelled in both), ``both`` (the
    portion of all images labelled in both) and ``score = ari * both``: both factors in
    [0, 1] for any non-degenerate clustering; 0 when no image is labelled twice.
    """
    from sklearn.metrics import adjusted_rand_score

    a = np.asarray(trained_on).reshape(-1)
    b = np.asarray(relabelled).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} and {b.shape[0]} labels: not the same images")
    both = (a >= 0) & (b >= 0)
    if a.size == 0 or both.sum() < 2:
        return {"ari": 0.0, "both": 0.0, "score": 0.0}
    ari = float(adjusted_rand_score(a[both], b[both]))
    share = float(both.mean())
    return {"ari": ari, "both": share, "score": max(ari, 0.0) * share}


def _sample(n: int, max_n: int, seed: int) -> np.ndarray:
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def soft_neighborhood_density(
    features, *, temperature: float = 0.05, max_samples: int = 4000, seed: int = 0
) -> float:
    """SND (Saito et al. 2021, eq. 2-3): L2-normalise, cosine similarities to every other
    sample, softmax with ``temperature`` per row (self excluded), mean row entropy, divided
    here by ``log(n - 1)`` so that it lies in [0, 1]. Computed on a seeded random subset of
    at most ``max_samples`` rows."""
    x = _normalized(features)
    idx = torch.from_numpy(_sample(len(x), max_samples, seed))
    x = x[idx]
    n = len(x)
    if n < 3:
        return 0.0
    ent = torch.zeros(())
    for a in range(0, n, 1024):
        sim = x[a : a + 1024] @ x.T / float(temperature)
        rows = torch.arange(a, min(a + 1024, n))
        sim[torch.arange(len(rows)), rows] = -math.inf
        logp = torch.log_softmax(sim, dim=1)
        p = logp.exp()
        ent = ent + (-(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum())
    return float(ent / n / math.log(n - 1))


def cross_camera_neighbors(
    features, camids, *, k: int = 10, max_samples: int = 4000, seed: int = 0
) -> float:
    """Mean fraction of each sampled image's ``k`` nearest neighbours (cosine, among all
    images) that come from another camera; NaN when camera ids are unknown (< 0)."""
    cams = np.asarray(camids).reshape(-1)
    if len(cams) == 0 or (cams < 0).any() or len(np.unique(cams)) < 2:
        return float("nan")
    x = _normalized(features)
    n = len(x)
    k = min(int(k), n - 1)
    if k < 1:
        return float("nan")
    idx = _sample(n, max_samples, seed)
    cams_t = torch.from_numpy(cams.astype(np.int64))
    total = 0.0
    for a in range(0, len(idx), 1024):
        rows = torch.from_numpy(idx[a : a + 1024])
        sim = x[rows] @ x.T
        sim[torch.arange(len(rows)), rows] = -math.inf
        nn_idx = sim.topk(k, dim=1).indices
        total += float((cams_t[nn_idx] != cams_t[rows][:, None]).float().mean(1).sum())
    return total / len(idx)


def choose_holdout(
    labels, camids, fraction: float, *, seed: int = 0, min_clusters: int = 3
) -> np.ndarray:
    """The clusters of ``labels`` (-1 = left out) to hold back from training: a seeded random
    ``fraction`` of those that span two cameras or more (any cluster of >= 2 images when camera
    ids are unknown), at least ``min_clusters`` of them when there are twice as many, and never
    more than half. Returns the held-back cluster ids (sorted; empty when ``fraction`` is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"adapt.holdout must be in [0, 1), got {fraction}")
    lab = np.asarray(labels).reshape(-1)
    cams = np.asarray(camids).reshape(-1)
    if fraction == 0.0 or not (lab >= 0).any():
        return np.zeros(0, dtype=np.int64)
    known = len(cams) == len(lab) and (cams >= 0).all()
    eligible = []
    for c in np.unique(lab[lab >= 0]):
        members = lab == c
        if members.sum() >= 2 and (not known or len(np.unique(cams[members])) >= 2):
            eligible.append(int(c))
    n = len(eligible)
    k = max(int(round(fraction * n)), min(min_clusters, n // 2))
    k = min(k, n // 2)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(np.asarray(eligible), size=k, replace=False)
    return np.sort(chosen).astype(np.int64)


def holdout_map(
    features,
    labels,
    camids,
    distractors=None,
    *,
    max_queries: int = 2000,
    max_distractors: int = 10000,
    seed: int = 0,
) -> float:
    """Retrieval mAP of held-back images whose ``labels`` are their step-1 cluster ids:
    every held-back image (``features`` rows; at most ``max_queries``, a seeded sample) queries
    the other held-back images plus ``distractors`` (features of the images that are not held
    back, each its own identity: at most ``max_distractors`` of them), under the Market-1501
    protocol (same label and same camera removed; with unknown camera ids, only the query
    itself), cosine distance of L2-normalised features. The distractors make it a search among
    the whole target, as a user's search is: a model that pulls other people close to a
    held-back person loses, which a score among a few held-back clusters alone barely sees.
    NaN when no query has a match, or when one cluster is held back and there are no
    distractors."""
    from .metrics import evaluate_rank

    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    cams = np.asarray(camids).reshape(-1).astype(np.int64)
    has_distractors = distractors is not None and len(distractors) > 0
    if len(lab) == 0 or (len(np.unique(lab)) < 2 and not has_distractors):
        return float("nan")
    if len(cams) != len(lab) or (cams < 0).any():
        cams = np.arange(len(lab), dtype=np.int64)  # each image its own camera: only self out
    x = _normalized(features)
    q = torch.from_numpy(_sample(len(x), max_queries, seed))
    g, g_lab, g_cams = x, lab, cams
    if has_distractors:
        d = _normalized(distractors)
        d = d[torch.from_numpy(_sample(len(d), max_distractors, seed))]
        extra = np.arange(len(d), dtype=np.int64) + int(lab.max()) + 1  # nobody's match
        g = torch.cat([x, d])
        g_lab = np.concatenate([lab, extra])
        g_cams = np.concatenate([cams, np.full(len(d), -2, dtype=np.int64)])
    dist = 1.0 - x[q] @ g.T
    qi = q.numpy()
    try:
        return float(evaluate_rank(dist, lab[qi], g_lab, cams[qi], g_cams, max_rank=1).mAP)
    except ValueError:  # no query with a true match
        return float("nan")


def _normalized(features) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    return torch.nn.functional.normalize(x.float(), dim=1)


def label_free_scores(
    features, camids, trained_on, relabelled, *, seed: int = 0
) -> dict[str, float]:
    """Every label-free score of one model: ``agreement`` (:func:`label_agreement`'s score;
    NaN when the model was not trained on pseudo-labels, i.e. the source model), ``snd``,
    ``cross_camera``, plus ``agreement_ari`` / ``agreement_both`` and ``portion_kept`` (of
    ``relabelled``)."""
    rel = np.asarray(relabelled).reshape(-1)
    out: dict[str, float] = {"portion_kept": float((rel >= 0).mean()) if rel.size else 0.0}
    if trained_on is None:
        out.update({"agreement": float("nan"), "agreement_ari": float("nan")})
        out["agreement_both"] = float("nan")
    else:
        ag = label_agreement(trained_on, rel)
        out.update(
            {"agreement": ag["score"], "agreement_ari": ag["ari"], "agreement_both": ag["both"]}
        )
    out["snd"] = soft_neighborhood_density(features, seed=seed)
    out["cross_camera"] = cross_camera_neighbors(features, camids, seed=seed)
    return out
