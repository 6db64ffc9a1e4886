"""Evaluate a model on a dataset's query / gallery split: extract -> distance -> metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.datasets import ReidDataset
from ..data.loaders import build_test_loader
from ..data.transforms import build_transforms
from ..evaluation import RankResult, evaluate_rank, pairwise_distance
from .extract import Features, extract_features


@dataclass
class EvalOutput:
    result: RankResult
    distmat: np.ndarray
    query: Features
    gallery: Features
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = dict(self.result.as_dict())
        out.update({f"time_{k}_s": round(v, 3) for k, v in self.seconds.items()})
        return out


def evaluate_model(
    model: torch.nn.Module,
    dataset: ReidDataset,
    *,
    height: int,
    width: int,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 2,
    metric: str = "euclidean",
    flip: bool = False,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    amp: str = "none",
    channels_last: bool = False,
    verbose: bool = True,
) -> EvalOutput:
    """Rank the gallery for every query (Market protocol) and compute CMC / mAP / mINP.

    With ``rerank`` the distance is the k-reciprocal re-ranking of Zhong et al. (CVPR 2017),
    computed by the sparse engine in :mod:`adaptreid.pseudo.kreciprocal`."""
    if not dataset.query or not dataset.gallery:
        raise ValueError(f"dataset {dataset.name!r} has no query/gallery split to evaluate on")
    tf = build_transforms(height, width, train=False)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    kw = dict(device=device, flip=flip, amp=amp, channels_last=channels_last, verbose=verbose)
    q = extract_features(
        model, build_test_loader(dataset.query, tf, batch_size, num_workers), desc="query", **kw
    )
    g = extract_features(
        model, build_test_loader(dataset.gallery, tf, batch_size, num_workers), desc="gallery", **kw
    )
    seconds["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if rerank:
        from ..evaluation.rerank import rerank as k_reciprocal_rerank

        dist = k_reciprocal_rerank(q.feats, g.feats, k1=k1, k2=k2, lambda_value=lambda_value)
    else:
        dist = pairwise_distance(q.feats, g.feats, metric=metric)
    dist = dist.numpy() if torch.is_tensor(dist) else np.asarray(dist)
    seconds["distance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids)
    seconds["metrics"] = time.perf_counter() - t0
    return EvalOutput(result, dist, q, g, seconds)
