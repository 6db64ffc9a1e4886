"""Datasets stored as Market-1501-style image folders, read from their file names:
Market-1501, DukeMTMC-reID, CUHK03-NP and MSMT17 (registered in
:data:`adaptreid.data.datasets.DATASETS`; conventions in :mod:`adaptreid.data.datasets`)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DatasetError
from .datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    MARKET_PATTERN,
    MissingSplit,
    ReidDataset,
    Sample,
    check_dir,
    int_or_none,
    is_image,
    locate,
    problem_list,
)

__all__ = ["cuhk03", "dukemtmc", "load_named_folders", "market1501", "msmt17"]


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
            if not (is_image(entry.name) and entry.is_file()):
                excluded["non-image entries (ignored)"] += 1
                continue
            match = pattern.match(entry.name)
            pid = int_or_none(match.group(1)) if match else None
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
            + problem_list(sorted(bad))
        )
    if not samples and not excluded:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    if not samples:
        raise DatasetError(f"no usable images in {folder} (all are junk or not images)")
    samples.sort()
    return samples


def load_named_folders(
    name: str,
    base: Path,
    folders: dict[str, str],
    pattern: re.Pattern[str] = MARKET_PATTERN,
) -> ReidDataset:
    """The splits of a Market-style folder; a split whose folder is absent or holds no
    images (e.g. an evaluation-only copy's empty train folder) is a :class:`MissingSplit`."""
    splits: dict[str, list[Sample]] = {}
    excluded = {}
    for split, sub in folders.items():
        folder = base / sub
        if not folder.is_dir():
            splits[split] = MissingSplit(split, f"folder {folder} is missing")
            continue
        if not any(is_image(n) for n in os.listdir(folder)):  # e.g. an evaluation-only copy
            splits[split] = MissingSplit(
                split, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"
            )
            continue
        counts: Counter[str] = Counter()
        splits[split] = _scan_named_folder(folder, pattern, counts)
        if counts:
            excluded[split] = dict(counts)
    return ReidDataset(name=name, root=base, excluded=excluded, **splits)


BBOX_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
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
    base = locate(
        check_dir(root),
        _has_splits(BBOX_FOLDERS),
        ("market-1501*", "market1501*"),
        f"Market-1501 layout ({_BBOX_DESC})",
    )
    return load_named_folders("market1501", base, BBOX_FOLDERS)


@DATASETS.register("dukemtmc", "duke", "dukemtmc-reid")
def dukemtmc(root: str | Path) -> ReidDataset:
    """DukeMTMC-reID. ``root`` is ``DukeMTMC-reID`` or the folder that contains it. Names
    ``<pid>_c<cam>_f<frame>.jpg`` (8 cameras)."""
    base = locate(
        check_dir(root),
        _has_splits(BBOX_FOLDERS),
        ("dukemtmc-reid*", "dukemtmc*", "duke*"),
        f"DukeMTMC-reID layout ({_BBOX_DESC})",
    )
    return load_named_folders("dukemtmc", base, BBOX_FOLDERS)


@DATASETS.register("cuhk03", "cuhk03-np")
def cuhk03(root: str | Path, variant: str = "detected") -> ReidDataset:
    """CUHK03-NP (new protocol, 767/700 identities). ``root`` is ``cuhk03-np`` (holding
    ``detected/`` and ``labeled/``, each with Market-style folders) or contains it.
    ``variant``: ``"detected"`` (default) or ``"labeled"`` boxes."""
    if variant not in ("detected", "labeled"):
        raise DatasetError(f"cuhk03: variant must be 'detected' or 'labeled', got {variant!r}")
    subs = {split: f"{variant}/{sub}" for split, sub in BBOX_FOLDERS.items()}
    base = locate(
        check_dir(root),
        _has_splits(subs),
        ("cuhk03*",),
        f"CUHK03-NP layout ({variant}/ with {_BBOX_DESC})",
    )
    return load_named_folders(f"cuhk03-{variant}", base, subs)


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
        raise DatasetError(f"malformed MSMT17 list file {list_file}:\n" + problem_list(problems))
    if missing:
        raise DatasetError(
            f"{len(missing):,} image(s) listed in {list_file} do not exist:\n"
            + problem_list(missing)
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
    base = locate(
        check_dir(root),
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
