"""The Python API, for trackers and analytics code::

    import adaptreid

    model = adaptreid.load("runs/msplr/checkpoints/best.pt")
    gallery = model.embed(["a.jpg", pil_image, uint8_hxwx3_array])   # (N, D) float32
    query = model.embed(["q.jpg"])
    hits = adaptreid.search(query, gallery, top=5, metric=model.metric)
    hits.indices, hits.distances                                      # (Q, 5) each

``model.embed`` extracts exactly as ``adaptreid evaluate`` / ``adaptreid embed`` do (the same
transform and extraction function), so its features equal theirs.
"""

from __future__ import annotations

from pathlib import Path

from .retrieval.embed import Embedder
from .retrieval.features import FeatureSet, load_features
from .retrieval.search import Rerank, SearchResult, search

__all__ = [
    "Embedder",
    "FeatureSet",
    "Rerank",
    "SearchResult",
    "load",
    "load_features",
    "search",
]


def load(
    checkpoint: str | Path,
    *,
    device: str = "auto",
    amp: str = "auto",
    channels_last: bool | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    flip: bool = False,
) -> Embedder:
    """The model of an adaptreid checkpoint, ready to embed images, with the extraction
    settings of ``adaptreid evaluate`` and of a run.

    ``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda:N``;
    ``amp``: ``auto`` (bf16 + channels_last where a probe measures it faster on this machine,
    fp32 elsewhere; probed once per machine and model, as ``train.amp: auto`` does for
    extraction), ``none`` (float32), ``bf16``, ``fp16`` (CUDA); ``channels_last``: None
    (the probe's choice with ``auto``) or True / False to force it; ``num_workers``: loader
    processes decoding image files (used for more than one batch of files; in-memory images
    are transformed in this process); ``flip``: average with the mirrored image. A file
    that is not a model checkpoint raises :class:`~adaptreid.errors.CheckpointError`
    naming it."""
    return Embedder.from_checkpoint(
        checkpoint,
        device=device,
        amp=amp,
        channels_last=channels_last,
        batch_size=batch_size,
        num_workers=num_workers,
        flip=flip,
    )
