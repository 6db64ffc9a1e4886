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

import csv
import inspect
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, NamedTuple

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
    "load_manifest",
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


def _check_root(root: str | Path) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.exists():
        raise DatasetError(f"dataset root {path} does not exist")
    return path


def _check_dir(root: str | Path) -> Path:
    path = _check_root(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a folder")
    return path


def _matching_dirs(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and any(fnmatch(p.name.lower(), pat) for pat in patterns)
    )


def _locate(
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
    candidates = _matching_dirs(root, child_patterns) if child_patterns else []
    candidates += [q for p in candidates for q in _matching_dirs(p, child_patterns)]
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


def _problem_list(problems: Sequence[str], limit: int = _MAX_LISTED) -> str:
    text = "\n".join(f"  {p}" for p in problems[:limit])
    if len(problems) > limit:
        text += f"\n  ... and {len(problems) - limit:,} more"
    return text


def _int_or_none(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_named_folder(
    folder: Path, pattern: re.Pattern[str], excluded: Counter[str]
) -> list[Sample]:
    """Samples of one Market-style folder: pid and camera parsed from each file name with
    ``pattern`` (groups: pid, 1-based camera). Junk (pid -1) is counted in ``excluded``."""
    if not folder.is_dir():
        raise DatasetError(f"expected image folder {folder} is missing")
    samples, bad = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not (_is_image(entry.name) and entry.is_file()):
                excluded["non-image entries (ignored)"] += 1
                continue
            match = pattern.match(entry.name)
            pid = _int_or_none(match.group(1)) if match else None
            cam = int(match.group(2)) if match else None
            if pid is None or cam is None or pid < -1 or cam < 1:
                bad.append(os.path.join(folder, entry.name))
                continue
            if pid == -1:
                excluded["junk images (pid -1, standard protocol)"] += 1
                continue
            samples.append(Sample(os.path.join(folder, entry.name), pid, cam - 1))
    if bad:
        raise DatasetError(
            f"{len(bad):,} file name(s) in {folder} do not match the expected pattern "
            f"'<pid>_c<camera>...' (regex {pattern.pattern}, pid >= -1, camera >= 1):\n"
            + _problem_list(sorted(bad))
        )
    if not samples and not excluded:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    if not samples:
        raise DatasetError(f"no usable images in {folder} (all are junk or not images)")
    samples.sort()
    return samples


def _load_named_folders(
    name: str,
    base: Path,
    folders: dict[str, str],
    pattern: re.Pattern[str] = MARKET_PATTERN,
) -> ReidDataset:
    """The splits of a Market-style folder; a split whose folder is absent is a
    :class:`MissingSplit`."""
    splits: dict[str, list[Sample]] = {}
    excluded = {}
    for split, sub in folders.items():
        folder = base / sub
        if not folder.is_dir():
            splits[split] = MissingSplit(split, f"folder {folder} is missing")
            continue
        if not any(_is_image(n) for n in os.listdir(folder)):  # e.g. an evaluation-only copy
            splits[split] = MissingSplit(
                split, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"
            )
            continue
        counts: Counter[str] = Counter()
        splits[split] = _scan_named_folder(folder, pattern, counts)
        if counts:
            excluded[split] = dict(counts)
    return ReidDataset(name=name, root=base, excluded=excluded, **splits)


_BBOX_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_BBOX_DESC = "bounding_box_train/ (to train) and/or query/ + bounding_box_test/ (to evaluate)"


def _has_splits(folders: dict[str, str]) -> Callable[[Path], bool]:
    """A folder has the layout if it holds the train folder, or the query and gallery
    folders (an evaluation-only copy), or both."""

    def check(p: Path) -> bool:
        return (p / folders["train"]).is_dir() or all(
            (p / folders[s]).is_dir() for s in ("query", "gallery")
        )

    return check


# ---------------------------------------------------------------------------------------------
# Folder datasets


@DATASETS.register("market1501", "market")
def market1501(root: str | Path) -> ReidDataset:
    """Market-1501. ``root`` is ``Market-1501-v15.09.15`` (any ``Market-1501*`` folder) or
    the folder that contains it. Names ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg``."""
    base = _locate(
        _check_dir(root),
        _has_splits(_BBOX_FOLDERS),
        ("market-1501*", "market1501*"),
        f"Market-1501 layout ({_BBOX_DESC})",
    )
    return _load_named_folders("market1501", base, _BBOX_FOLDERS)


@DATASETS.register("dukemtmc", "duke", "dukemtmc-reid")
def dukemtmc(root: str | Path) -> ReidDataset:
    """DukeMTMC-reID. ``root`` is ``DukeMTMC-reID`` or the folder that contains it. Names
    ``<pid>_c<cam>_f<frame>.jpg`` (8 cameras)."""
    base = _locate(
        _check_dir(root),
        _has_splits(_BBOX_FOLDERS),
        ("dukemtmc-reid*", "dukemtmc*", "duke*"),
        f"DukeMTMC-reID layout ({_BBOX_DESC})",
    )
    return _load_named_folders("dukemtmc", base, _BBOX_FOLDERS)


@DATASETS.register("cuhk03", "cuhk03-np")
def cuhk03(root: str | Path, variant: str = "detected") -> ReidDataset:
    """CUHK03-NP (new protocol, 767/700 identities). ``root`` is ``cuhk03-np`` (holding
    ``detected/`` and ``labeled/``, each with Market-style folders) or contains it.
    ``variant``: ``"detected"`` (default) or ``"labeled"`` boxes."""
    if variant not in ("detected", "labeled"):
        raise DatasetError(f"cuhk03: variant must be 'detected' or 'labeled', got {variant!r}")
    subs = {split: f"{variant}/{sub}" for split, sub in _BBOX_FOLDERS.items()}
    base = _locate(
        _check_dir(root),
        _has_splits(subs),
        ("cuhk03*",),
        f"CUHK03-NP layout ({variant}/ with {_BBOX_DESC})",
    )
    return _load_named_folders(f"cuhk03-{variant}", base, subs)


# ---------------------------------------------------------------------------------------------
# MSMT17

_MSMT_VERSIONS = {"V2": ("mask_train_v2", "mask_test_v2"), "V1": ("train", "test")}


def _msmt_version(path: Path) -> str | None:
    """``V2`` / ``V1`` if ``path`` holds that version's train list and folder, or its query
    and gallery lists and test folder (an evaluation-only copy); else None."""
    lists = [(path / f"list_{s}.txt").is_file() for s in ("train", "query", "gallery")]
    for version, (train_dir, test_dir) in _MSMT_VERSIONS.items():
        if lists[0] and (path / train_dir).is_dir():
            return version
        if lists[1] and lists[2] and (path / test_dir).is_dir():
            return version
    return None


def _msmt_split(split: str, list_files: Sequence[Path], image_dir: Path) -> list[Sample]:
    """The samples listed in ``list_files`` (the first one decides whether the split
    exists: absent, with its image folder or not, -> :class:`MissingSplit`)."""
    if not list_files[0].is_file():
        return MissingSplit(split, f"MSMT17 list file {list_files[0]} is missing")
    if not image_dir.is_dir():
        return MissingSplit(split, f"MSMT17 image folder {image_dir} is missing")
    samples: list[Sample] = []
    for f in list_files:
        samples += _read_msmt_list(f, image_dir)
    return samples


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[Sample]:
    if not list_file.is_file():
        raise DatasetError(f"MSMT17 list file {list_file} is missing")
    samples, problems, missing = [], [], []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                problems.append(f"line {lineno}: expected '<relative path> <pid>', got {line!r}")
                continue
            rel, pid_text = parts
            fields = os.path.basename(rel).split("_")
            try:
                pid = int(pid_text)
                cam = int(fields[2])
            except (ValueError, IndexError):
                problems.append(
                    f"line {lineno}: expected an integer pid and a file name "
                    f"'<pid>_<index>_<camera>_...', got {line.strip()!r}"
                )
                continue
            if pid < 0 or cam < 1:
                problems.append(f"line {lineno}: pid must be >= 0 and camera >= 1 in {rel!r}")
                continue
            path = os.path.join(image_dir, rel)
            if not os.path.isfile(path):
                missing.append(f"line {lineno}: {path}")
            samples.append(Sample(path, pid, cam - 1))
    if problems:
        raise DatasetError(f"malformed MSMT17 list file {list_file}:\n" + _problem_list(problems))
    if missing:
        raise DatasetError(
            f"{len(missing):,} image(s) listed in {list_file} do not exist:\n"
            + _problem_list(missing)
        )
    if not samples:
        raise DatasetError(f"MSMT17 list file {list_file} lists no images")
    return samples


@DATASETS.register("msmt17", "msmt")
def msmt17(root: str | Path, use_val: bool = True) -> ReidDataset:
    """MSMT17 V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``) with
    ``list_{train,val,query,gallery}.txt`` (lines ``<relative path> <pid>``). ``root`` is the
    ``MSMT17_V*`` folder or contains it. Camera = third ``_`` field of the name, stored 0-based.

    ``use_val=True`` (standard practice): train = ``list_train`` + ``list_val`` (the val
    images are train-folder images of train identities; with ``list_train.txt`` present a
    missing ``list_val.txt`` is an error). A folder with only the train part, or only the
    query / gallery part, opens with the other splits missing.
    """
    base = _locate(
        _check_dir(root),
        lambda p: _msmt_version(p) is not None,
        ("msmt17*",),
        "MSMT17 layout (list_train.txt with train/ (V1) or mask_train_v2/ (V2), and/or "
        "list_query.txt + list_gallery.txt with test/ (V1) or mask_test_v2/ (V2))",
    )
    version = _msmt_version(base)
    assert version is not None
    train_dir, test_dir = (base / d for d in _MSMT_VERSIONS[version])
    train_lists = [base / "list_train.txt"] + ([base / "list_val.txt"] if use_val else [])
    return ReidDataset(
        name="msmt17",
        root=base,
        train=_msmt_split("train", train_lists, train_dir),
        query=_msmt_split("query", [base / "list_query.txt"], test_dir),
        gallery=_msmt_split("gallery", [base / "list_gallery.txt"], test_dir),
    )


# ---------------------------------------------------------------------------------------------
# CSV manifests

MANIFEST_COLUMNS = ("path", "pid", "camid", "split")
_OPTIONAL_COLUMNS = ("camid",)


def _parse_int(value: str, column: str, lineno: int, problems: list[str]) -> int | None:
    try:
        return int(value)
    except ValueError:
        problems.append(f"line {lineno}: column {column!r} must be an integer, got {value!r}")
        return None


def load_manifest(
    csv_path: str | Path, *, name: str = "manifest", allow_absolute: bool = False
) -> ReidDataset:
    """Read a CSV manifest with columns ``path,pid,camid,split`` (extra columns are allowed
    and not used; ``camid`` may be left out).

    - ``path``: relative to the CSV's folder; absolute paths and paths with ``..`` that leave
      that folder are refused unless ``allow_absolute=True``.
    - ``pid``: integer >= 0; empty or ``-1`` means unlabelled (``train`` split only).
    - ``camid``: integer >= 0, stored as given; empty, ``-1`` or no ``camid`` column means
      unknown (stored as -1, see the module docstring).
    - ``split``: ``train``, ``query`` or ``gallery``; a split without rows is a
      :class:`MissingSplit`.

    All row problems are collected and reported together (line numbers count the header as
    line 1), up to 5 of each kind.
    """
    csv_path = _check_root(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"manifest {csv_path} is not a file")
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetError(
                f"manifest {csv_path} is empty: expected a header row {','.join(MANIFEST_COLUMNS)}"
            )
        header = [h.strip().lower() for h in header]
        missing_cols = [
            c for c in MANIFEST_COLUMNS if c not in header and c not in _OPTIONAL_COLUMNS
        ]
        if missing_cols:
            raise DatasetError(
                f"manifest {csv_path} lacks column(s) {', '.join(missing_cols)} "
                f"(expected header {','.join(MANIFEST_COLUMNS)}, camid optional; "
                f"found {','.join(header)})"
            )
        col = {c: header.index(c) for c in MANIFEST_COLUMNS if c in header}
        rows = [(reader.line_num, row) for row in reader if any(v.strip() for v in row)]

    problems: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, list[int]] = defaultdict(list)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for lineno, row in rows:
        if len(row) != len(header):
            problems["row length"].append(
                f"line {lineno}: {len(row)} values for {len(header)} columns"
            )
            continue
        path_text, pid_text, cam_text, split = (
            row[col[c]].strip() if c in col else "" for c in MANIFEST_COLUMNS
        )
        split = split.lower()
        if split not in SPLITS:
            problems["split"].append(
                f"line {lineno}: unknown split {split!r} (expected train, query or gallery)"
            )
            continue
        pid = -1 if pid_text == "" else _parse_int(pid_text, "pid", lineno, problems["value"])
        camid = (
            UNKNOWN_CAMERA
            if cam_text == ""
            else _parse_int(cam_text, "camid", lineno, problems["value"])
        )
        if pid is None or camid is None:
            continue
        if pid < -1 or camid < UNKNOWN_CAMERA:
            problems["value"].append(
                f"line {lineno}: pid must be >= 0 (or empty/-1 = unlabelled) and camid >= 0 "
                f"(or empty/-1 = unknown), got pid={pid_text!r} camid={cam_text!r}"
            )
            continue
        if pid == -1 and split != "train":
            problems["value"].append(
                f"line {lineno}: unlabelled image (empty or -1 pid) in split {split!r}; "
                f"only train images may be unlabelled"
            )
            continue
        if not path_text:
            problems["path"].append(f"line {lineno}: empty path")
            continue
        escapes = os.path.isabs(path_text) or os.path.normpath(path_text).startswith("..")
        if escapes and not allow_absolute:
            problems["path"].append(
                f"line {lineno}: path {path_text!r} leaves the manifest folder {base} "
                f"(absolute or '..'); allow it with --allow-absolute-paths (CLI), "
                "data.allow_absolute_paths=true (config) or allow_absolute=True (Python)"
            )
            continue
        full = os.path.normpath(os.path.join(base, path_text))
        seen[full].append(lineno)
        if len(seen[full]) > 1:
            continue
        if not os.path.isfile(full):
            problems["missing"].append(f"line {lineno}: {full}")
            continue
        splits[split].append(Sample(full, pid, camid))

    for full, lines in seen.items():
        if len(lines) > 1:
            problems["duplicate"].append(
                f"lines {', '.join(map(str, lines))}: the same image {full}"
            )
    if any(problems.values()):
        titles = {
            "row length": "rows with the wrong number of values",
            "split": "unknown split values",
            "value": "bad pid/camid values",
            "path": "paths that are empty or leave the manifest folder",
            "missing": "paths that do not exist",
            "duplicate": "duplicate paths",
        }
        parts = [
            f"{len(problems[k]):,} {title}:\n{_problem_list(problems[k])}"
            for k, title in titles.items()
            if problems.get(k)
        ]
        raise DatasetError(f"invalid manifest {csv_path}:\n" + "\n".join(parts))
    if not any(splits.values()):
        raise DatasetError(f"manifest {csv_path} has no rows")
    for split, samples in splits.items():
        if not samples:
            splits[split] = MissingSplit(split, f"manifest {csv_path} has no {split!r} rows")
    return ReidDataset(name=name, root=base, **splits)


def _manifest_file(root: Path, child_patterns: Sequence[str] = ()) -> Path:
    if root.is_file():
        return root
    base = _locate(
        root,
        lambda p: (p / "manifest.csv").is_file(),
        child_patterns,
        "manifest.csv",
    )
    return base / "manifest.csv"


@DATASETS.register("manifest", "csv")
def manifest(root: str | Path, allow_absolute: bool = False) -> ReidDataset:
    """Any dataset described by a CSV manifest (see :func:`load_manifest`). ``root`` is the
    ``.csv`` file or a folder containing ``manifest.csv``."""
    return load_manifest(_manifest_file(_check_root(root)), allow_absolute=allow_absolute)


@DATASETS.register("pku-reid", "pku", "pkureid")
def pku_reid(root: str | Path, allow_absolute: bool = False) -> ReidDataset:
    """PKU-Reid (as described by its ``manifest.csv``). ``root`` is the folder with
    ``manifest.csv`` or a folder containing a ``pku*reid*`` folder with it."""
    csv_path = _manifest_file(_check_root(root), ("pku*reid*",))
    return load_manifest(csv_path, name="pku-reid", allow_absolute=allow_absolute)
