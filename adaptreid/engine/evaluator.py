"""Evaluate a model on a dataset's query / gallery split: extract -> distance -> metrics.

Bad images: with ``bad_images="skip"`` unreadable query / gallery images are left out of the
evaluation (the query is not ranked, the gallery image is not in any ranking) and listed in
:attr:`EvalOutput.dropped`; :meth:`EvalOutput.metrics` then counts them. Rows and columns of
``distmat`` follow ``query.kept`` / ``gallery.kept`` (positions in ``dataset.query`` /
``dataset.gallery``), not the full splits.

Unknown cameras (camid -1): see :func:`protocol_camids`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..data.datasets import UNKNOWN_CAMERA, ReidDataset
from ..data.image_cache import ImageCache
from ..data.loaders import build_test_loader
from ..data.transforms import build_transforms
from ..errors import DatasetError
from ..evaluation import RankResult, evaluate_rank, pairwise_distance
from ..runtime.precision import Precision
from .extract import Features, extract_features


@dataclass
class EvalOutput:
    result: RankResult
    distmat: np.ndarray
    """(Q', G') distances between the *kept* query and gallery images."""
    query: Features
    gallery: Features
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, list[tuple[int, str, str]]]:
        """``{"query": [(index, path, reason), ...], "gallery": [...]}``: the unreadable
        images left out of the evaluation (``bad_images="skip"``), by split."""
        return {"query": list(self.query.dropped), "gallery": list(self.gallery.dropped)}

    def metrics(self) -> dict[str, float]:
        """CMC / mAP / mINP, timings and, when images were left out, ``bad_query_images``
        and ``bad_gallery_images`` (counts; :attr:`dropped` lists them)."""
        out = dict(self.result.as_dict())
        out.update({f"time_{k}_s": round(v, 3) for k, v in self.seconds.items()})
        for split, items in self.dropped.items():
            if items:
                out[f"bad_{split}_images"] = len(items)
        return out


def protocol_camids(q_camids: np.ndarray, g_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera ids for the Market protocol's "same identity and same camera" filter, with
    unknown cameras (-1) made unequal to every camera, unknown ones included.

    The filter removes from a query's ranking the gallery images of its identity taken by its
    camera. Passing -1 as is would make every unknown-camera pair "same camera" and remove
    every true match of a dataset without camera ids. Here an unknown query camera becomes
    -1 and an unknown gallery camera -2 (never equal to a query's camid), so a pair with an
    unknown camera is never filtered: every true match counts, as in a single-camera
    protocol. Known camera ids are unchanged."""
    q = np.asarray(q_camids, dtype=np.int64).copy()
    g = np.asarray(g_camids, dtype=np.int64).copy()
    q[q == UNKNOWN_CAMERA] = -1
    g[g == UNKNOWN_CAMERA] = -2
    return q, g


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate_model` evaluates: input size, loader, ``eval.*`` (distance,
    flip averaging, k-reciprocal re-ranking), precision, unreadable images."""

    height: int
    width: int
    batch_size: int = 128
    num_workers: int = 2
    metric: str = "euclidean"
    flip: bool = False
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    amp: str = "none"
    channels_last: bool = False
    bad_images: str = "error"
    """``"error"`` (an unreadable image raises, naming it) or ``"skip"`` (left out, reported)."""
    image_cache_dir: str = ""
    """Folder of the image cache (:class:`~adaptreid.data.image_cache.ImageCache`: images
    decoded and resized once, the same features); ``""``: every evaluation decodes."""

    @classmethod
    def from_config(cls, cfg: Any, **changes: Any) -> EvalSettings:
        """The run's settings: ``data.height/width/test_batch_size/num_workers``, ``eval.*``."""
        e = cfg.eval
        return cls(
            height=cfg.data.height,
            width=cfg.data.width,
            batch_size=cfg.data.test_batch_size,
            num_workers=cfg.data.num_workers,
            metric=e.metric,
            flip=e.flip,
            rerank=e.rerank,
            k1=e.k1,
            k2=e.k2,
            lambda_value=e.lambda_value,
            **changes,
        )


def evaluate_model(
    model: torch.nn.Module,
    dataset: ReidDataset,
    settings: EvalSettings | None = None,
    *,
    device: torch.device,
    verbose: bool = True,
    **changes: Any,
) -> EvalOutput:
    """Rank the gallery for every query (Market protocol) and compute CMC / mAP / mINP.

    The three evaluation entry points, from the bottom: this one takes every setting
    explicitly (``adaptreid evaluate`` on a checkpoint); :func:`~adaptreid.engine.builders.
    evaluate_cfg` fills them from a run's config; :func:`~adaptreid.engine.builders.
    evaluate_on` runs that on rank 0 and broadcasts the metrics, so every rank of a
    distributed run takes the same decisions.

    With ``rerank`` the distance is the k-reciprocal re-ranking of Zhong et al. (CVPR 2017),
    computed by the sparse engine in :mod:`adaptreid.pseudo.kreciprocal`. ``bad_images``:
    ``"error"`` (an unreadable image raises, naming it) or ``"skip"`` (it is left out and
    reported, see the module docstring). Raises :class:`DatasetError` naming the missing
    split when the dataset has no query or gallery images (or none readable).

    ``settings``: an :class:`EvalSettings`, passed whole; ``changes``: keyword changes of it
    (or, without ``settings``, its fields: ``height=..., width=..., metric=...``)."""
    st = EvalSettings(**changes) if settings is None else replace(settings, **changes)
    height, width, batch_size, num_workers = st.height, st.width, st.batch_size, st.num_workers
    flip, amp, channels_last, bad_images = st.flip, st.amp, st.channels_last, st.bad_images
    dataset.require("query", "gallery", purpose="evaluation")
    tf = build_transforms(height, width, train=False)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    kw = dict(device=device, flip=flip, precision=Precision(amp, channels_last), verbose=verbose)
    cache = ImageCache(st.image_cache_dir, height, width) if st.image_cache_dir else None
    lkw = dict(
        batch_size=batch_size, num_workers=num_workers, bad_images=bad_images, image_cache=cache
    )
    q = extract_features(model, build_test_loader(dataset.query, tf, **lkw), desc="query", **kw)
    g = extract_features(model, build_test_loader(dataset.gallery, tf, **lkw), desc="gallery", **kw)
    seconds["extract"] = time.perf_counter() - t0
    for split, f in (("query", q), ("gallery", g)):
        if not len(f.kept):
            raise DatasetError(
                f"none of the {len(dataset.split(split)):,} {split} images of dataset "
                f"{dataset.name!r} could be read (first: {f.dropped[0][1]}: {f.dropped[0][2]})"
            )
    t0 = time.perf_counter()
    if st.rerank:
        from ..pseudo.kreciprocal import k_reciprocal_rerank

        dist = k_reciprocal_rerank(
            q.feats, g.feats, k1=st.k1, k2=st.k2, lambda_value=st.lambda_value
        )
    else:
        dist = pairwise_distance(q.feats, g.feats, metric=st.metric)
    dist = dist.numpy() if torch.is_tensor(dist) else np.asarray(dist)
    seconds["distance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_rank(dist, q.pids, g.pids, *protocol_camids(q.camids, g.camids))
    seconds["metrics"] = time.perf_counter() - t0
    return EvalOutput(result, dist, q, g, seconds)
