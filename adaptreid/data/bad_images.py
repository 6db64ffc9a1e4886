"""A record of the unreadable images a run met and skipped, for its folder and its report.

With ``bad_images="skip"`` the loaders drop an unreadable image from its batch and list it in
``batch["bad"]`` as ``(index, path, reason)`` (see :mod:`adaptreid.data.loaders`);
:func:`adaptreid.engine.extract.extract_features` collects them in ``Features.dropped`` and
:func:`adaptreid.engine.evaluator.evaluate_model` in ``EvalOutput.dropped``. A run keeps one
:class:`BadImageLog` and feeds it everything it is told about::

    log = BadImageLog.load(run_dir)                 # empty if the run has none yet (or new)
    feats = extract_features(model, loader, ...)
    log.add_many(feats.dropped, where="extract step 3")
    trainer = Trainer(..., on_bad_images=lambda bad: log.add_many(bad, where=f"train step {s}"))
    ...
    if log.changed:
        log.save(run_dir)                           # bad_images.json, written atomically
    report_md += log.to_markdown()                  # "" when there is nothing to report

Each image is recorded **once** (the first reason and the first place it was met, e.g.
``"extract step 3"`` or ``"train step 2 epoch 5"``); later sightings only increase its
``count``. The file survives a resume: ``load`` then ``add_many`` again is idempotent for the
images already there, so a resumed run reports each bad image once.

File format (``bad_images.json``)::

    {"version": 1,
     "images": [{"path": "...", "reason": "...", "first_seen": "...", "count": 2}, ...]}

in the order the images were first met.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError

__all__ = ["BadImage", "BadImageLog"]

_VERSION = 1


@dataclass
class BadImage:
    """One unreadable image: its ``path``, why it could not be read, where it was first met
    and how many times it was met (dropped) since."""

    path: str
    reason: str
    first_seen: str
    count: int = 1


class BadImageLog:
    """Unreadable images met by a run, each recorded once (path -> reason, first seen where).

    ``changed`` is True after an :meth:`add` / :meth:`add_many` since the last
    :meth:`save` / :meth:`load`, so callers can write the file only when needed.
    """

    FILENAME = "bad_images.json"

    def __init__(self) -> None:
        self._images: dict[str, BadImage] = {}
        self.changed = False

    # ------------------------------------------------------------------ recording
    def add(self, path: str | os.PathLike[str], reason: str, where: str) -> bool:
        """Record ``path`` (unreadable because of ``reason``, met at ``where``). Returns True
        if it is new; an image already recorded keeps its first reason and place and only
        has its ``count`` increased."""
        key = str(path)
        self.changed = True
        known = self._images.get(key)
        if known is not None:
            known.count += 1
            return False
        self._images[key] = BadImage(key, str(reason), str(where))
        return True

    def add_many(self, items: Iterable[Any], where: str) -> int:
        """Record each of ``items``: ``(index, path, reason)`` tuples (``batch["bad"]``,
        ``Features.dropped``), ``(path, reason)`` pairs or :class:`BadImage`. Returns how
        many were new."""
        new = 0
        for item in items:
            if isinstance(item, BadImage):
                path, reason = item.path, item.reason
            elif len(item) == 3:
                _, path, reason = item
            elif len(item) == 2:
                path, reason = item
            else:
                raise ValueError(
                    f"BadImageLog.add_many: expected (index, path, reason) or (path, reason), "
                    f"got {item!r}"
                )
            new += self.add(path, reason, where)
        return new

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._images)

    def __bool__(self) -> bool:
        return bool(self._images)

    def __contains__(self, path: object) -> bool:
        return str(path) in self._images

    def __iter__(self) -> Iterator[BadImage]:
        return iter(list(self._images.values()))

    def get(self, path: str | os.PathLike[str]) -> BadImage | None:
        """The record of ``path``, or None."""
        return self._images.get(str(path))

    @property
    def paths(self) -> list[str]:
        """The recorded paths, in the order they were first met."""
        return list(self._images)

    def summary(self) -> str:
        """One line for a log or the end of a run: ``"no unreadable image"`` or
        ``"3 unreadable images skipped (first: /x/a.jpg: is empty (0 bytes), at extract
        step 1)"``."""
        if not self._images:
            return "no unreadable image"
        first = next(iter(self._images.values()))
        n = len(self._images)
        return (
            f"{n:,} unreadable image{'s' if n != 1 else ''} skipped (first: {first.path}: "
            f"{first.reason}, at {first.first_seen})"
        )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"version": _VERSION, "images": [asdict(b) for b in self._images.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "bad-image log") -> BadImageLog:
        log = cls()
        try:
            if data.get("version") != _VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_VERSION}")
            for entry in data["images"]:
                b = BadImage(
                    str(entry["path"]),
                    str(entry["reason"]),
                    str(entry["first_seen"]),
                    int(entry.get("count", 1)),
                )
                log._images[b.path] = b
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{source} is not a valid bad-image log: {e}") from e
        return log

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/bad_images.json`` atomically (a temporary file in the same folder,
        flushed and fsynced, then :func:`os.replace`): a kill at any moment leaves either
        the previous file or the new one, whole. Returns the path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.FILENAME
        fd, tmp = tempfile.mkstemp(prefix=f".{self.FILENAME}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.changed = False
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> BadImageLog:
        """The log saved in ``folder`` (an empty log when there is no file yet). A file that
        is not a bad-image log raises :class:`DatasetError` naming it."""
        path = Path(folder) / cls.FILENAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read the bad-image log {path}: {e}") from e
        if not isinstance(data, dict):
            raise DatasetError(f"{path} is not a valid bad-image log: not a JSON object")
        return cls.from_dict(data, source=str(path))

    # ------------------------------------------------------------------ report
    def to_markdown(
        self,
        title: str = "Unreadable images",
        *,
        level: int = 2,
        root: str | os.PathLike[str] | None = None,
        limit: int = 50,
    ) -> str:
        """A markdown section for a run report: a heading, a sentence with the count, and a
        table (image | reason | first seen | times dropped), at most ``limit`` rows (the rest
        are counted, with a pointer to ``bad_images.json``). Paths under ``root`` are shown
        relative to it. Empty string when no image was recorded."""
        if not self._images:
            return ""
        n = len(self._images)
        lines = [
            f"{'#' * level} {title}",
            "",
            f"{n:,} image{'s' if n != 1 else ''} could not be read and "
            f"{'were' if n != 1 else 'was'} skipped (left out of training, feature extraction "
            "and evaluation); each is listed once, where it was first met.",
            "",
            "| image | reason | first seen | times dropped |",
            "|---|---|---|---:|",
        ]
        for b in list(self._images.values())[:limit]:
            lines.append(
                f"| `{_md(_shown(b.path, root))}` | {_md(b.reason)} | {_md(b.first_seen)} "
                f"| {b.count} |"
            )
        if n > limit:
            lines += ["", f"... and {n - limit:,} more (all of them in `{self.FILENAME}`)."]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"BadImageLog({len(self)} images)"


def _shown(path: str, root: str | os.PathLike[str] | None) -> str:
    if root is None:
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _md(text: str) -> str:
    """Text safe inside a markdown table cell (one line, no column break)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")
