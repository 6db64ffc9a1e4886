"""Feature extraction: batched, optional flip averaging, L2-normalised, AMP, channels_last."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import TrainingError
from ..runtime import threads
from ..runtime.device import autocast
from ..runtime.precision import Precision


@dataclass
class Features:
    """Features of a list of samples, in the list's order.

    With a loader in ``bad_images="skip"`` mode, unreadable images have no row: ``kept`` are
    the positions (in the loader's sample list) of the rows, increasing, and ``dropped`` the
    ``(index, path, reason)`` of the images left out. Realign with a sample list by
    ``[samples[i] for i in f.kept]``. Without drops, ``kept == arange(N)`` and ``dropped``
    is empty.
    """

    feats: torch.Tensor
    """(N, D) float32 on the CPU."""
    pids: np.ndarray
    camids: np.ndarray
    kept: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    """(N,) int64: the sample index of each row."""
    dropped: list[tuple[int, str, str]] = field(default_factory=list)
    """``(index, path, reason)`` of each sample left out because its image is unreadable."""

    def __post_init__(self) -> None:
        if len(self.kept) == 0 and len(self.pids):
            self.kept = np.arange(len(self.pids), dtype=np.int64)


def l2_normalize(feats: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """L2-normalise each row; with ``parts`` > 1 each of the equal-width chunks is normalised
    separately and the chunks stay concatenated (PAST section 3.1, PCB parts)."""
    if parts <= 1:
        return F.normalize(feats, dim=1)
    n, d = feats.shape
    if d % parts:
        raise ValueError(f"feature width {d} is not divisible by parts={parts}")
    return F.normalize(feats.view(n, parts, d // parts), dim=2).reshape(n, d)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str = "cpu",
    flip: bool = False,
    normalize: bool = True,
    precision: Precision | None = None,
    desc: str = "extract",
    verbose: bool = True,
) -> Features:
    """Run ``model`` in eval mode over ``loader`` (batches of dicts with ``img``, ``pid``,
    ``camid``, and optionally ``index`` and ``bad``). With ``flip`` the features of the image
    and its mirror are averaged. Features are L2-normalised per part when ``normalize``
    (``model.num_parts`` parts, default 1). ``precision``: autocast dtype and input layout
    (default: fp32, default layout). Raises :class:`TrainingError` if a feature is NaN
    or infinite.

    Images a loader in ``bad_images="skip"`` mode dropped (``batch["bad"]``) have no feature:
    they are listed in :attr:`Features.dropped` and :attr:`Features.kept` maps each row to its
    sample (``batch["index"]``; without it, rows are numbered in loader order)."""
    device = torch.device(device) if isinstance(device, str) else device
    precision = precision or Precision()
    was_training = model.training
    model.eval()
    feats, pids, camids, kept = [], [], [], []
    dropped: list[tuple[int, str, str]] = []
    seen = 0
    try:
        for batch in tqdm(loader, desc=desc, disable=not verbose, leave=False, unit="batch"):
            threads.refresh()  # this process's share of the cores, re-checked every few s
            dropped += [(int(i), str(p), str(r)) for i, p, r in batch.get("bad", ())]
            n = len(batch["img"])
            if "index" in batch:
                kept.append(np.asarray(batch["index"], dtype=np.int64).reshape(-1))
            else:
                kept.append(np.arange(seen, seen + n, dtype=np.int64))
            seen += n
            if n == 0:
                continue  # every image of this batch was unreadable
            x = batch["img"].to(device, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision.amp):
                f = model(x).float()
                if flip:
                    f = (f + model(torch.flip(x, dims=[3])).float()) / 2
            feats.append(f.cpu())
            pids.append(
                batch["pid"].numpy() if torch.is_tensor(batch["pid"]) else np.asarray(batch["pid"])
            )
            camids.append(
                batch["camid"].numpy()
                if torch.is_tensor(batch["camid"])
                else np.asarray(batch["camid"])
            )
    finally:
        model.train(was_training)
    out = torch.cat(feats) if feats else torch.empty(0, 0)
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).any(dim=1).sum())
        raise TrainingError(
            f"{bad} of {len(out)} extracted features contain NaN or inf: the model diverged "
            "or its weights are corrupt"
        )
    if normalize and len(out):
        out = l2_normalize(out, getattr(model, "num_parts", 1))
    return Features(
        out,
        np.concatenate(pids) if pids else np.empty(0, int),
        np.concatenate(camids) if camids else np.empty(0, int),
        kept=np.concatenate(kept) if kept else np.empty(0, np.int64),
        dropped=sorted(dropped),
    )
