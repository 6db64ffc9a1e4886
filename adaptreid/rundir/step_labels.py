"""Each adaptation step's pseudo-labels, kept in the run folder for people to look at.

``<run>/labels/step_N.npz`` holds ``paths`` (the target training images the labels follow),
``labels`` (cluster id, ``-1`` for an image left out) and ``camids`` (-1 unknown). Written
atomically by the adaptation loop when it makes the step's labels; ``report.html`` draws a
few clusters of each step from them. Nothing reads them back to train: resuming uses the
checkpoint.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["StepLabels", "load_step_labels", "save_step_labels", "step_label_files"]


@dataclass
class StepLabels:
    paths: list[str]
    labels: np.ndarray
    camids: np.ndarray


def save_step_labels(run_dir: str | Path, step: int, paths, labels, camids) -> Path:
    """Write ``run_dir/labels/step_<step>.npz`` atomically (temp file + rename)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(paths) != len(labels) or len(camids) != len(labels):
        raise ValueError(
            f"step {step}: {len(paths)} paths, {len(labels)} labels, {len(camids)} camids"
        )
    folder = Path(run_dir) / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        paths=np.asarray([str(p) for p in paths], dtype=str),
        labels=labels,
        camids=np.asarray(camids, dtype=np.int64),
    )
    path = folder / f"step_{int(step)}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_step_labels(path: str | Path) -> StepLabels:
    with np.load(path, allow_pickle=False) as z:
        return StepLabels([str(p) for p in z["paths"]], z["labels"], z["camids"])


def step_label_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, file)]`` of ``run_dir/labels/step_N.npz``, by step."""
    folder = Path(run_dir) / "labels"
    if not folder.is_dir():
        return []
    found = []
    for f in folder.iterdir():
        if m := re.fullmatch(r"step_(\d+)\.npz", f.name):
            found.append((int(m.group(1)), f))
    return sorted(found)
