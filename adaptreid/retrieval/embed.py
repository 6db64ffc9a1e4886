"""A checkpoint's model as a feature extractor for new images.

:class:`Embedder` extracts with the very function ``adaptreid evaluate`` uses
(:func:`~adaptreid.engine.extract.extract_features`, test-time transform of the checkpoint's
input size, L2-normalised per part), so the features of an image are the same numbers
whichever way it is embedded: ``adaptreid embed``, ``adaptreid search``, the Python API or
the evaluation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.datasets import IMAGE_EXTENSIONS, MARKET_PATTERN, UNKNOWN_CAMERA, Sample
from ..data.images import _to_rgb, read_image
from ..data.loaders import build_test_loader, collate_skip_bad
from ..data.transforms import build_transforms
from ..engine.extract import extract_features
from ..errors import CheckpointError, DatasetError
from ..rundir.model_io import model_from_checkpoint
from ..runtime.device import resolve_device
from ..runtime.precision import Precision, resolve_precision
from .features import FeatureSet, model_fingerprint

log = logging.getLogger("adaptreid")

__all__ = ["Embedder", "as_pil", "folder_samples"]


def folder_samples(folder: str | Path) -> list[Sample]:
    """Every image under ``folder`` (recursively, sorted by path). When every file name is
    Market-style (``<pid>_c<camera>...``) the identities and cameras come from the names;
    otherwise both are unknown (-1). A folder without images raises :class:`DatasetError`."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a folder")
    paths = sorted(
        os.path.join(d, n)
        for d, _, names in os.walk(root)
        for n in names
        if n.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    parsed = [MARKET_PATTERN.match(os.path.basename(p)) for p in paths]
    if all(m and int(m.group(1)) >= 0 and int(m.group(2)) >= 1 for m in parsed):
        return [Sample(p, int(m.group(1)), int(m.group(2)) - 1) for p, m in zip(paths, parsed)]
    return [Sample(p, -1, UNKNOWN_CAMERA) for p in paths]


class _Items(torch.utils.data.Dataset):
    """Images given as paths, PIL images or uint8 ``H x W x 3`` arrays, through ``transform``."""

    def __init__(self, items: Sequence[Any], transform) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = as_pil(self.items[i], i)
        return {"img": self.transform(img), "pid": -1, "camid": -1, "index": i}


def as_pil(item: Any, i: int = 0) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a uint8 ``H x W x 3`` array."""
    if isinstance(item, str | os.PathLike):
        return read_image(item)
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise DatasetError(
                f"image {i}: expected a uint8 array of shape (H, W, 3) (RGB), got "
                f"{item.dtype} {item.shape}"
            )
        return Image.fromarray(item, "RGB")
    raise DatasetError(
        f"image {i}: expected a file path, a PIL image or a uint8 (H, W, 3) array, "
        f"got {type(item).__name__}"
    )


@dataclass(frozen=True)
class EmbedSettings:
    """How an :class:`Embedder` extracts: ``device`` (``auto``, ``cpu``, ``cuda:0`` or a
    :class:`torch.device`), ``amp`` (``auto``: bf16 + channels_last where a probe finds it
    faster on this machine, cached, as a run's extraction does; ``none``, ``bf16``,
    ``fp16``), ``channels_last`` (None: the probe's choice with ``auto``, off otherwise;
    True / False forces it), ``batch_size``, ``num_workers`` (loader processes decoding image
    files) and ``flip`` (add the features of the mirrored image)."""

    device: str | torch.device = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    batch_size: int = 64
    num_workers: int = 2
    flip: bool = False


class Embedder:
    """A model and the way to extract its features (device, precision, input size)."""

    def __init__(
        self,
        model: torch.nn.Module,
        info: dict[str, Any],
        *,
        checkpoint: str = "",
        settings: EmbedSettings | None = None,
    ) -> None:
        st = settings or EmbedSettings()
        device, amp, channels_last = st.device, st.amp, st.channels_last
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.info = info
        self.checkpoint = checkpoint
        self.height = int(info.get("height") or 256)
        self.width = int(info.get("width") or 128)
        amp, channels_last, reason = resolve_precision(
            amp,
            self.model,
            (self.height, self.width),
            self.device,
            channels_last=channels_last,
            mode="extract",
        )
        if st.amp == "auto":
            log.info("extraction precision: %s", reason)
        self.amp, self.channels_last = amp, channels_last
        self.batch_size, self.num_workers, self.flip = st.batch_size, st.num_workers, st.flip
        self.transform = build_transforms(self.height, self.width, train=False)
        cfg = info.get("config") or {}
        self.metric = (cfg.get("eval") or {}).get("metric", "euclidean")
        with torch.no_grad():
            x = torch.zeros(1, 3, self.height, self.width, device=self.device)
            self.feat_dim = int(self.model(x).shape[1])
        name = cfg.get("name") or model.arch.get("backbone", "model")
        self.fingerprint = model_fingerprint(
            model.state_dict(), config_name=str(name), feat_dim=self.feat_dim
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **settings: Any) -> Embedder:
        """The model of an adaptreid checkpoint (``settings``: the fields of
        :class:`EmbedSettings`); a file that is not one raises :class:`CheckpointError` in one
        line naming it."""
        st = EmbedSettings(**settings)
        try:
            model, info = model_from_checkpoint(path)
        except CheckpointError as e:  # (its hint at evaluate's --backbone does not apply here)
            msg = str(e).split(". For plain backbone weights")[0]
            raise CheckpointError(msg) from None
        except Exception as e:  # a dict that is not a model's: missing arch fields, ...
            raise CheckpointError(
                f"{path} is not an adaptreid model checkpoint (could not read a model from it: "
                f"{type(e).__name__}: {e})"
            ) from None
        return cls(model, info, checkpoint=str(path), settings=st)

    def _extract(self, loader, *, desc: str, verbose: bool):
        return extract_features(
            self.model,
            loader,
            device=self.device,
            flip=self.flip,
            precision=Precision(self.amp, self.channels_last),
            desc=desc,
            verbose=verbose,
        )

    def embed_samples(
        self, samples: Sequence[Sample], *, verbose: bool = True, desc: str = "embed"
    ) -> tuple[FeatureSet, list[tuple[int, str, str]]]:
        """Features of ``samples`` (images that do not decode are skipped); returns the
        feature set and the ``(index, path, reason)`` of the images left out."""
        loader = build_test_loader(
            list(samples), self.transform, self.batch_size, self.num_workers, bad_images="skip"
        )
        f = self._extract(loader, desc=desc, verbose=verbose)
        kept = [samples[i] for i in f.kept]
        pids = np.array([s.pid for s in kept], dtype=np.int64)
        return (
            FeatureSet(
                f.feats.numpy(),
                [s.path for s in kept],
                np.array([s.camid for s in kept], dtype=np.int64),
                self.fingerprint,
                pids=pids if len(pids) and (pids >= 0).all() else None,
                meta=self.describe(),
            ),
            f.dropped,
        )

    def embed(self, images: Iterable[Any], *, verbose: bool = False) -> np.ndarray:
        """``(N, D)`` float32 features of ``images`` (paths, PIL images or uint8 ``H x W x 3``
        RGB arrays, mixed as you like), in order, batched. An unreadable file raises."""
        items = list(images)
        if not items:
            return np.empty((0, self.feat_dim), np.float32)
        loader = torch.utils.data.DataLoader(
            _Items(items, self.transform),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate_skip_bad,
            num_workers=self._workers_for(items),
        )
        return self._extract(loader, desc="embed", verbose=verbose).feats.numpy()

    def _workers_for(self, items: Sequence[Any]) -> int:
        """Loader processes for :meth:`embed`: ``num_workers`` to decode image files of more
        than one batch, none otherwise. Starting worker processes costs more than it saves
        for images already in memory (a tracker's crops, every frame) or a single batch."""
        files = all(isinstance(x, str | os.PathLike) for x in items)
        return self.num_workers if files and len(items) > self.batch_size else 0

    def describe(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "backbone": self.model.arch.get("backbone"),
            "input_size": [self.height, self.width],
            "feat_dim": self.feat_dim,
            "flip": self.flip,
            "metric": self.metric,
        }
