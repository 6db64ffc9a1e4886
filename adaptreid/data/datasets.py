"""Re-ID datasets as three lists of samples: ``train``, ``query`` and ``gallery``.

A dataset is built by name from a root folder::

    >>> ds = build_dataset("market1501", "/data/market1501")   # doctest: +SKIP
    >>> print(ds.format_summary())                              # doctest: +SKIP

Nothing is opened at build time: folders are listed with :func:`os.scandir` and file names
parsed, so even 100k-image datasets build in well under a second.

Conventions
-----------
``pid``
    Person identity, an int. Folder datasets keep the raw pid of the file name (training code
    maps them to ``0..C-1`` with :func:`relabel`). ``-1`` means *unlabelled* (allowed in
    ``train`` only, e.g. a manifest row with an empty pid). Market-style *junk* images (pid -1
    in the file name) are excluded from every split, as the standard protocol does; they are
    counted in :attr:`ReidDataset.excluded` and reported by :meth:`ReidDataset.format_summary`.
    *Distractors* (pid 0) are kept in the gallery.
``camid``
    Camera, an int. For datasets whose camera comes from a file name (Market-1501,
    DukeMTMC-reID, CUHK03-NP, MSMT17), camera numbers are 1-based in the names and stored
    **0-based** (``c1`` -> ``0``), so cameras are ``0..C-1``. A CSV manifest's ``camid`` column
    is stored **as given** (any integer >= 0): evaluation and camera-aware code only compare
    camids for equality, so only consistency within a dataset matters.

    ``-1`` means **unknown camera**: a manifest without a ``camid`` column, or a row with an
    empty (or ``-1``) camid. :attr:`ReidDataset.cameras_known` is False as soon as one image
    has an unknown camera; camera-aware steps (per-camera normalisation, the >= 2-camera
    cluster rule) must then be switched off, and ``adaptreid data info`` prints
    ``camera ids: unknown``. In evaluation an unknown camera equals no camera, not even
    another unknown one: the Market protocol's "same identity, same camera" filter removes
    no gallery image of a query whose camera (or the gallery image's) is unknown, so every
    true match counts (see :func:`adaptreid.engine.evaluator.protocol_camids`).
``path``
    A string path to the image file (the root joined with the relative name).

Missing splits
--------------
A dataset opens with the splits it has: a Market-style folder needs ``bounding_box_train/``
(to train) and/or ``query/`` + ``bounding_box_test/`` (to evaluate); an MSMT17 folder its
train or query/gallery lists; a manifest any rows. A split it lacks is an empty
:class:`MissingSplit` (a list) that says what is missing; ``adaptreid data info`` shows it.
Code that uses a split fails with that message: :meth:`ReidDataset.require` (evaluation
needs query and gallery), :func:`relabel` (training), and the loaders of
:mod:`adaptreid.data.loaders`. A split folder that exists but holds no image is still an error.

Every malformed input raises :class:`~adaptreid.errors.DatasetError` naming the file or
folder and what was expected; nothing is skipped silently. Files in a split folder that are
not images (``Thumbs.db``, ``.DS_Store``, ...) are ignored *and counted* in ``excluded``.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError, DatasetError
from ..registry import Registry

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "UNKNOWN_CAMERA",
    "MissingSplit",
    "ReidDataset",
    "Sample",
    "build_dataset",
    "dataset_info",
    "ground_truth",
    "pseudo_samples",
    "relabel",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "query", "gallery")
MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d)")
_MAX_LISTED = 5
UNKNOWN_CAMERA = -1


class Sample(NamedTuple):
    """One image: its file ``path``, person id ``pid`` (-1 = unlabelled) and camera ``camid``
    (-1 = unknown)."""

    path: str
    pid: int
    camid: int


class MissingSplit(list):
    """The (empty) sample list of a split that the dataset does not have.

    It behaves as an empty list everywhere; ``split`` is its name and ``reason`` says what is
    missing (``"folder /data/x/bounding_box_train is missing"``), for the error raised where
    the split is actually needed (:meth:`error`)."""

    def __init__(self, split: str, reason: str) -> None:
        super().__init__()
        self.split = split
        self.reason = reason

    def error(self, dataset: str = "", purpose: str = "") -> DatasetError:
        """A :class:`DatasetError` naming the split, the dataset, what is missing and why it
        is needed (``purpose``: "training", "evaluation", ...)."""
        who = f" of dataset {dataset!r}" if dataset else ""
        why = f"; {purpose} needs it" if purpose else ""
        return DatasetError(f"no {self.split} split{who}: {self.reason}{why}")

    def __repr__(self) -> str:
        return f"MissingSplit({self.split!r}, {self.reason!r})"

    def __reduce__(self):  # pickles (DataLoader workers, broadcasts) as itself
        return (MissingSplit, (self.split, self.reason))


@dataclass
class ReidDataset:
    """The three splits of a re-ID dataset.

    ``excluded`` maps a split to ``{reason: count}`` for images the protocol leaves out
    (Market junk) and entries that are not images; :meth:`format_summary` reports them.
    A split the dataset lacks is a :class:`MissingSplit` (see :attr:`missing`).
    """

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name`` (``train``, ``query`` or ``gallery``)."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def missing(self) -> dict[str, str]:
        """``{split: what is missing}`` for the splits this dataset does not have."""
        return {
            name: self.split(name).reason
            for name in SPLITS
            if isinstance(self.split(name), MissingSplit)
        }

    def require(self, *splits: str, purpose: str = "") -> None:
        """Raise :class:`DatasetError` unless every split in ``splits`` has images; the
        message names the split, what is missing (folder, list file, manifest rows) and
        ``purpose`` (e.g. ``require("query", "gallery", purpose="evaluation")``)."""
        for name in splits:
            samples = self.split(name)
            if samples:
                continue
            if isinstance(samples, MissingSplit):
                raise samples.error(self.name, purpose)
            why = f"; {purpose} needs it" if purpose else ""
            raise DatasetError(f"dataset {self.name!r} ({self.root}) has no {name} images{why}")

    @property
    def cameras_known(self) -> bool:
        """True when every image has a camera id (none is ``-1``, unknown). An empty dataset
        counts as known."""
        return all(s.camid != UNKNOWN_CAMERA for name in SPLITS for s in self.split(name))

    def summary(self) -> dict[str, dict[str, int]]:
        """``{split: {"images", "identities", "cameras"}}``.

        ``identities`` counts distinct labelled pids (pid -1, unlabelled, is not an identity;
        the distractor pid 0 is one); ``cameras`` distinct known camera ids (not -1).
        """
        out = {}
        for name in SPLITS:
            samples = self.split(name)
            out[name] = {
                "images": len(samples),
                "identities": len({s.pid for s in samples if s.pid != -1}),
                "cameras": len({s.camid for s in samples if s.camid != UNKNOWN_CAMERA}),
            }
        return out

    def format_summary(self) -> str:
        """A small aligned text table (split | images | identities | cameras) plus notes on
        unlabelled and excluded images."""
        rows = [("split", "images", "identities", "cameras")]
        missing = self.missing
        for name, stats in self.summary().items():
            if name in missing:
                rows.append((name, "-", "-", "-"))
                continue
            unknown = sum(s.camid == UNKNOWN_CAMERA for s in self.split(name))
            cams = "unknown" if unknown and not stats["cameras"] else f"{stats['cameras']:,}"
            rows.append((name, f"{stats['images']:,}", f"{stats['identities']:,}", cams))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]

        def fmt(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            return "  " + " | ".join(cells)

        lines = [f"{self.name}  ({self.root})", fmt(rows[0])]
        lines.append("  " + "-+-".join("-" * w for w in widths))
        lines += [fmt(r) for r in rows[1:]]
        for name in SPLITS:
            unlabelled = sum(s.pid == -1 for s in self.split(name))
            if unlabelled:
                lines.append(f"  note: {unlabelled:,} {name} images are unlabelled (pid -1)")
        for name in SPLITS:
            for reason, count in self.excluded.get(name, {}).items():
                lines.append(f"  excluded from {name}: {count:,} {reason}")
        for name, reason in missing.items():
            lines.append(f"  no {name} split: {reason}")
        total = sum(len(self.split(name)) for name in SPLITS)
        unknown = sum(s.camid == UNKNOWN_CAMERA for name in SPLITS for s in self.split(name))
        if unknown:
            part = "" if unknown == total else f" for {unknown:,} of {total:,} images"
            lines.append(
                f"  camera ids: unknown{part} (camid -1): no camera normalisation, no "
                "2-camera cluster rule; evaluation filters no same-camera match"
            )
        return "\n".join(lines)


DATASETS: Registry[Callable[..., ReidDataset]] = Registry("dataset")


def build_dataset(name: str, root: str | Path, **kwargs: object) -> ReidDataset:
    """Build the registered dataset ``name`` from ``root``.

    Known names: see ``DATASETS.names()``. ``kwargs`` are the dataset's options (for example
    ``variant="labeled"`` for ``cuhk03``); an unknown option raises :class:`ConfigError`.
    """
    factory = DATASETS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params) - {"root"})
    if unknown:
        accepted = [p for p in params if p != "root"]
        raise ConfigError(
            f"dataset {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return factory(root, **kwargs)


def open_dataset(
    name: str,
    root: str | Path,
    *,
    allow_absolute_paths: bool = False,
    options: dict[str, Any] | None = None,
    field: str = "options",
) -> ReidDataset:
    """:func:`build_dataset` with the options that the command line and configs expose:
    ``allow_absolute_paths`` lets a manifest's paths leave its folder (other datasets have no
    paths to allow and ignore it); ``options`` are extra keyword arguments of the dataset's
    factory (e.g. ``{preset: tiny}`` for ``synthetic-source``), checked against its
    signature; ``field`` names them in errors (``data.source_options``)."""
    factory = DATASETS.get(name)
    params = inspect.signature(factory).parameters
    kwargs = dict(options or {})
    allowed = [p for p in params if p != "root"]
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise DatasetError(
            f"{field}: dataset {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )
    if allow_absolute_paths and "allow_absolute" in params:
        kwargs["allow_absolute"] = True
    return build_dataset(name, root, **kwargs)


def dataset_info(name: str, root: str | Path, **kwargs: object) -> str:
    """Text for ``adaptreid data info``: the dataset's summary table."""
    return build_dataset(name, root, **kwargs).format_summary()


def relabel(samples: Iterable[Sample]) -> tuple[list[Sample], dict[int, int]]:
    """Map pids to contiguous ``0..C-1`` in sorted pid order; ``-1`` (unlabelled) stays -1.

    Returns the relabelled samples and the ``{old_pid: new_pid}`` mapping. ``samples`` being
    a :class:`MissingSplit` (training on a split the dataset lacks) raises
    :class:`DatasetError` saying what is missing.
    """
    if isinstance(samples, MissingSplit):
        raise samples.error(purpose="training")
    samples = list(samples)
    bad = sorted({s.pid for s in samples if s.pid < -1})
    if bad:
        raise DatasetError(f"relabel: pids must be >= 0 or -1 (unlabelled), got {bad[:5]}")
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples if s.pid != -1}))}
    return [s._replace(pid=mapping.get(s.pid, -1)) for s in samples], mapping


# ---------------------------------------------------------------------------------------------
# Shared helpers


def pseudo_samples(train: list[Sample], labels: np.ndarray) -> list[Sample]:
    """The pseudo-labelled training set: images with a label >= 0, pid = the label."""
    return [Sample(s.path, int(lab), s.camid) for s, lab in zip(train, labels) if lab >= 0]


def ground_truth(train: list[Sample]) -> np.ndarray | None:
    """Target train pids when every image has one (for label-quality analysis only)."""
    pids = np.array([s.pid for s in train])
    return pids if len(pids) and (pids >= 0).all() else None


def check_root(root: str | Path) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.exists():
        raise DatasetError(f"dataset root {path} does not exist")
    return path


def check_dir(root: str | Path) -> Path:
    path = check_root(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a folder")
    return path


def matching_dirs(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and any(fnmatch(p.name.lower(), pat) for pat in patterns)
    )


def locate(
    root: Path,
    is_layout: Callable[[Path], bool],
    child_patterns: Sequence[str],
    looked_for: str,
) -> Path:
    """``root`` itself if it has the layout, else the one folder with it among the subfolders
    of ``root`` matching ``child_patterns`` (case-insensitive) and *their* matching subfolders
    (so ``data/`` finds ``data/market1501/Market-1501-v15.09.15``)."""
    if is_layout(root):
        return root
    candidates = matching_dirs(root, child_patterns) if child_patterns else []
    candidates += [q for p in candidates for q in matching_dirs(p, child_patterns)]
    found = [p for p in candidates if is_layout(p)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise DatasetError(
            f"{root} holds several dataset folders ({listed}); pass the one to use as root"
        )
    where = str(root)
    if child_patterns:
        where += f" or its subfolders named {' / '.join(child_patterns)}"
    seen = ", ".join(str(p.relative_to(root)) for p in candidates)
    seen = f" (found {seen} without it)" if seen else ""
    raise DatasetError(f"no {looked_for} in {where}{seen}")


def problem_list(problems: Sequence[str], limit: int = _MAX_LISTED) -> str:
    text = "\n".join(f"  {p}" for p in problems[:limit])
    if len(problems) > limit:
        text += f"\n  ... and {len(problems) - limit:,} more"
    return text


def int_or_none(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)
