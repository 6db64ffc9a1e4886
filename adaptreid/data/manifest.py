"""Datasets described by a CSV manifest (``path,pid,camid,split``; README, "Bring your own
dataset") and PKU-Reid, shipped as one (registered in :data:`adaptreid.data.datasets.DATASETS`)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..errors import DatasetError
from .datasets import (
    DATASETS,
    SPLITS,
    UNKNOWN_CAMERA,
    MissingSplit,
    ReidDataset,
    Sample,
    check_root,
    locate,
    problem_list,
)

__all__ = ["MANIFEST_COLUMNS", "load_manifest", "manifest", "pku_reid"]


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
    csv_path = check_root(csv_path)
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
            f"{len(problems[k]):,} {title}:\n{problem_list(problems[k])}"
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
    base = locate(
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
    return load_manifest(_manifest_file(check_root(root)), allow_absolute=allow_absolute)


@DATASETS.register("pku-reid", "pku", "pkureid")
def pku_reid(root: str | Path, allow_absolute: bool = False) -> ReidDataset:
    """PKU-Reid (as described by its ``manifest.csv``). ``root`` is the folder with
    ``manifest.csv`` or a folder containing a ``pku*reid*`` folder with it."""
    csv_path = _manifest_file(check_root(root), ("pku*reid*",))
    return load_manifest(csv_path, name="pku-reid", allow_absolute=allow_absolute)
