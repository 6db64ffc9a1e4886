"""``adaptreid data check``: decode every image of a dataset, in parallel, and list the bad ones.

Building a dataset opens no image (see :mod:`adaptreid.data.datasets`), so a corrupt, empty,
truncated or non-image file is otherwise met only when a loader reads it, possibly hours into
a run. :func:`check_dataset` reads (fully decodes, as training does) every image of every
split with :func:`adaptreid.data.images.read_image`, in worker processes, and reports each
unreadable one with the reason::

    >>> report = check_dataset(build_dataset("market1501", root), workers=8)  # doctest: +SKIP
    >>> print(report.format()); report.ok                                     # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .datasets import SPLITS, ReidDataset
from .images import image_problem

__all__ = ["ImageCheck", "check_dataset", "check_images"]


def _problems(paths: list[str]) -> list[str | None]:
    return [image_problem(p) for p in paths]


def check_images(
    paths: Iterable[str],
    *,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "check images",
    chunk: int = 64,
) -> dict[str, str]:
    """``{path: reason}`` for the images of ``paths`` that cannot be read (decoded to RGB).

    ``workers``: processes reading in parallel (``None``: one per CPU core; ``0`` or ``1``:
    read in this process), each given up to ``chunk`` images at a time. ``progress`` shows a
    progress bar (images)."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    if workers is None:
        workers = os.cpu_count() or 1
    # at most ``chunk`` images per task, and several tasks per process on small datasets
    size = max(1, min(chunk, -(-len(unique) // (4 * max(1, workers)))))
    chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
    bad: dict[str, str] = {}
    bar = tqdm(total=len(unique), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(chunks) <= 1:
            results: Iterable[list[str | None]] = map(_problems, chunks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)))
            results = pool.map(_problems, chunks)
        for part, reasons in zip(chunks, results):
            bad.update((p, r) for p, r in zip(part, reasons) if r is not None)
            bar.update(len(part))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return bad


@dataclass
class ImageCheck:
    """What :func:`check_dataset` found: images checked per split, the bad ones as
    ``(split, path, reason)`` (in split order, then path order), time and processes used."""

    dataset: str
    root: Path
    counts: dict[str, int]
    bad: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every image could be read."""
        return not self.bad

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def format(self) -> str:
        """The report ``adaptreid data check`` prints: the bad images with their reasons,
        then a one-line summary."""
        lines = []
        if self.bad:
            width = max(len(split) for split, _, _ in self.bad)
            lines.append(f"{len(self.bad):,} bad image(s):")
            lines += [
                f"  {split.ljust(width)}  {path}: {reason}" for split, path, reason in self.bad
            ]
        for split, reason in self.missing.items():
            lines.append(f"no {split} split ({reason}): nothing to check there")
        per_split = ", ".join(
            f"{split} {sum(1 for s, _, _ in self.bad if s == split):,} of {n:,}"
            for split, n in self.counts.items()
        )
        verdict = (
            "all readable"
            if self.ok
            else f"{len(self.bad):,} bad ({per_split}); skip them in runs with "
            "data.bad_images=skip, or fix / remove the files"
        )
        lines.append(
            f"{self.dataset} ({self.root}): {self.total:,} images read in {self.seconds:.1f} s "
            f"with {self.workers} process(es): {verdict}"
        )
        return "\n".join(lines)


def check_dataset(
    dataset: ReidDataset, *, workers: int | None = None, progress: bool = False
) -> ImageCheck:
    """Read every image of every split of ``dataset`` (see :func:`check_images`)."""
    if workers is None:
        workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    paths = [s.path for name in SPLITS for s in dataset.split(name)]
    bad = check_images(paths, workers=workers, progress=progress, desc=f"check {dataset.name}")
    found = [
        (name, s.path, bad[s.path])
        for name in SPLITS
        for s in sorted(dataset.split(name), key=lambda s: s.path)
        if s.path in bad
    ]
    return ImageCheck(
        dataset=dataset.name,
        root=Path(dataset.root),
        counts={name: len(dataset.split(name)) for name in SPLITS},
        bad=found,
        seconds=time.perf_counter() - t0,
        workers=max(1, workers),
        missing=dataset.missing,
    )
